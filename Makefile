# The commands developers use. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: demo test install install-dev services browser-deps lint bench train evaluate lolo stress alarm temperature member2 ensemble lolo-ensemble lolo-pair tta-gate clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) install --quiet -e ".[train,dev,serve]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## demo: set up (light install, LiteRT only) and classify the bundled samples on the embedded default
demo: install
	$(VENV)/bin/hematovision analyze samples/cells -o report

## test: the whole suite (unit, API, TensorFlow, integration on Redis+Postgres and embedded SQLite)
test: install-dev services browser-deps
	$(PY) -m pytest

services:
	bash .ci/services

browser-deps:
	bash .ci/browser-deps

lint: install-dev
	$(VENV)/bin/ruff check .

bench: install-dev services
	$(PY) -m bench.throughput

CONFIG ?= training/configs/mnv2_cc_160_mixstyle.json
MODEL ?= $(firstword $(wildcard models/*))
config_key = $(shell $(PY) -c "import json,sys; print(json.load(open('$(CONFIG)'))['$(1)'])")
WORK = $(call config_key,work_dir)
SPLITS = $(WORK)/splits

## train: model 2.0 from ImageNet (BASE_CONFIG), 2.1 from its weights (MID_CONFIG), 2.2 from 2.1's with weight
## averaging (SWA_CONFIG), then the shipped 2.3 from 2.2's with MixStyle (CONFIG); finished runs are skipped.
## Then `make alarm` and `make temperature`.
BASE_CONFIG ?= training/configs/mnv2_cc_160.json
MID_CONFIG ?= training/configs/mnv2_cc_160_habits.json
SWA_CONFIG ?= training/configs/mnv2_cc_160_habits_swa.json
train: install-dev
	$(PY) -m training.train --config $(BASE_CONFIG)
	$(PY) -m training.train --config $(MID_CONFIG)
	$(PY) -m training.train --config $(SWA_CONFIG)
	$(PY) -m training.train --config $(CONFIG)
	$(PY) -m training.export --work-dir $(WORK) --int8-into $(call config_key,export_dir)

## evaluate: the model card's figures: held-out splits of the training config, and BCCD fields (odd half)
evaluate: install-dev
	$(PY) -m training.splits --config $(CONFIG)
	for split in kaggle_val pbc_val kaggle_test pbc_test; do \
	  $(PY) -m training.evaluate --model $(MODEL) --data $(SPLITS)/$$split --json $(MODEL)/eval/$$split.json || exit 1; done
	$(PY) -m training.evaluate_fields --data ../shared/data/bccd --model $(MODEL) --subset odd --out $(MODEL)/eval/fields

## lolo: leave-one-laboratory-out (train on PBC only / Kaggle only from ImageNet, score on the other laboratory's validation images)
LOLO_EPOCHS ?= 4
LOLO_LR ?= 0.0002
lolo: install-dev
	$(PY) -m training.lolo --config $(CONFIG) --root runs/lolo --finetune-epochs $(LOLO_EPOCHS) --finetune-lr $(LOLO_LR) --json runs/lolo/lolo.json
	$(PY) -m training.calibration --lolo-root runs/lolo --json runs/lolo/calibration.json

## member2: rule E's second network through the first's whole chain (2.0 -> 2.1 -> 2.2 -> 2.3 recipes) with seed 2
## on the same split, the four trainings in turn (re-running resumes: a finished training is not repeated, its export
## is); the last step's export is the member
member2: install-dev
	$(PY) -m training.splits --config $(CONFIG)
	for step in base habits swa chain; do $(PY) -m training.train --config training/configs/mnv2_cc_160_member2_$$step.json || exit 1; done

## ensemble: rule E (model card): FIRST_MEMBER (a single-network model directory: by default 2.3.2 as committed at
## FIRST_MEMBER_REV) and the export of MEMBER_CONFIG (the second network, trained by `make member2`) made one
## ensemble in runs/model_$(ENSEMBLE_VERSION) (training.ensemble: files, digests, temperature)
MEMBER_CONFIG ?= training/configs/mnv2_cc_160_member2_chain.json
ENSEMBLE_VERSION ?= 2.4.0
FIRST_MEMBER_REV ?= a7afe3a
FIRST_MEMBER ?= runs/first_member/models/hematovision-mnv2-cc-160
MEMBER_EXPORT = $(shell $(PY) -c "import json; print(json.load(open('$(MEMBER_CONFIG)'))['export_dir'])")
ensemble: member2
	test -d $(FIRST_MEMBER) || (mkdir -p runs/first_member && git archive $(FIRST_MEMBER_REV) models/hematovision-mnv2-cc-160 | tar -x -C runs/first_member)
	$(PY) -m training.ensemble --model $(FIRST_MEMBER) --member $(MEMBER_EXPORT) --data $(SPLITS)/kaggle_val $(SPLITS)/pbc_val \
	  --version $(ENSEMBLE_VERSION) --out runs/model_$(ENSEMBLE_VERSION)

## lolo-ensemble: rule E's stage A: two leave-one-laboratory-out runs (seeds 1337 and 2, one split), the ensemble
## of the two against its own members on the unseen laboratory
lolo-ensemble: install-dev
	$(PY) -m training.lolo --config $(CONFIG) --root runs/lolo --finetune-epochs $(LOLO_EPOCHS) --finetune-lr $(LOLO_LR) --json runs/lolo/lolo.json
	$(PY) -m training.lolo --config $(CONFIG) --root runs/lolo_s2 --finetune-epochs $(LOLO_EPOCHS) --finetune-lr $(LOLO_LR) \
	  --seed 2 --split-seed 1337 --json runs/lolo_s2/lolo.json
	$(PY) -m training.ensemble_study --roots runs/lolo runs/lolo_s2 --json runs/lolo/ensemble_study.json

## lolo-pair: rule P: the two runs of `make lolo-ensemble` assembled per direction as the pair is served, scored on the
## unseen laboratory with the constant temperature, the shipped distance shape and the cross-fitted one
SHIPPED_SHAPE ?= 0.5 1.1
lolo-pair: install-dev
	test -d runs/lolo_pair/export || $(PY) -m training.lolo_pair --roots runs/lolo runs/lolo_s2 --out runs/lolo_pair
	$(PY) -m training.distance_temperature --lolo-root runs/lolo_pair --limit 100 --shape $(SHIPPED_SHAPE) \
	  --json runs/lolo_pair/distance_temperature.json

## stress: the robustness suite (shifted validation images, never the test split); STRESS_LIMIT images per class
STRESS_LIMIT ?= 200
stress: install-dev
	$(PY) -m training.splits --config $(CONFIG)
	for split in kaggle_val pbc_val; do \
	  $(PY) -m training.stress --model $(MODEL) --data $(SPLITS)/$$split --limit $(STRESS_LIMIT) \
	    --json $(MODEL)/eval/stress_$$split.json --plot $(MODEL)/eval/stress_$$split.png --markdown $(MODEL)/eval/stress_$$split.md || exit 1; done

## temperature: the distance-aware temperature (training.distance_temperature): the shape from the LOLO models
## of `make lolo` (runs/lolo), within the model's in-domain ECE target; written into the manifest
temperature: install-dev
	$(PY) -m training.distance_temperature --lolo-root runs/lolo --limit 100 --json runs/lolo/distance_temperature.json
	$(PY) -m training.distance_temperature --model $(MODEL) --data $(SPLITS)/kaggle_val $(SPLITS)/pbc_val --limit 100 \
	  --shape-from-lolo runs/lolo --write --version $(ALARM_VERSION) --json $(MODEL)/eval/distance_temperature.json

## tta-gate: rule G's gate for HEMATOVISION_TTA=2 (8 views only where one view is unsure), chosen on validation images
## and written into the manifest; then the cost on the whole path, one view beside it (bench.tta)
TTA_VERSION ?= 2.4.3
tta-gate: install-dev services
	$(PY) -m training.splits --config $(CONFIG)
	$(PY) -m training.tta_gate --model $(MODEL) --data $(SPLITS)/kaggle_val $(SPLITS)/pbc_val --json $(MODEL)/eval/tta_gate.json \
	  --write-manifest --version $(TTA_VERSION)
	rm -rf runs/val_both && mkdir -p runs/val_both && cp -rL $(SPLITS)/kaggle_val $(SPLITS)/pbc_val runs/val_both/
	HEMATOVISION_MODEL_DIR=$(MODEL) $(PY) -m bench.tta --source runs/val_both --out bench/last_run_tta.txt

## alarm: refit the model's domain alarm without retraining (how 2.1.1 was made from 2.1), its stain, red-cell and focus checks,
## its field thresholds, then the int8 backend's own domain model (last: it keeps the pixel checks' references as fitted)
ALARM_VERSION ?= 2.3.0
alarm: install-dev
	$(PY) -m training.splits --config $(CONFIG)
	$(PY) -m training.refit_domain --model $(MODEL) --config $(CONFIG) --version $(ALARM_VERSION)
	$(PY) -m training.stain_check --model $(MODEL) --config $(CONFIG) --fit
	$(PY) -m training.stain_check --model $(MODEL) --config $(CONFIG) --fit --size
	$(PY) -m training.stain_check --model $(MODEL) --config $(CONFIG) --fit --focus
	$(PY) -m training.field_alarm --data ../shared/data/bccd --model $(MODEL) --fit
	$(PY) -m training.refit_domain --model $(MODEL) --config $(CONFIG) --version $(ALARM_VERSION) --backend litert-int8 \
	  --fields ../shared/data/bccd

clean:
	rm -rf var report bench/out .pytest_cache
