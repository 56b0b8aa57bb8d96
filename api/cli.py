"""The ``hematovision`` command: talk to the API, run servers, or analyze locally."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.settings import Settings


def _client(args):
    from api.client import ApiClient

    settings = Settings.from_env()
    return ApiClient(args.api or settings.api_url, token=settings.api_token)


def cmd_submit(args) -> int:
    from api.progress import ProgressLine

    client = _client(args)
    job = client.submit_folder(args.folder, name=args.name, batch_size=args.batch_size, kind=args.kind)
    print(f"job {job['id']} {job['status']} ({job['images']['total']} images)", flush=True)
    if not args.wait:
        return 0
    line = ProgressLine(job["images"]["total"])
    try:
        final = client.wait(job["id"], lambda j: line.update(j["images"]["done"] + j["images"]["failed"]))
    finally:
        line.close()
    print(f"job {final['id']} {final['status']}" + (f" ({final.get('error_code')}): {final['error']}" if final.get("error") else ""))
    if final["status"] == "succeeded":
        print_summary(json.loads(client.report(final["id"])))
    return 0 if final["status"] == "succeeded" else 1


def print_summary(summary: dict) -> None:
    """The differential table of a job, and of each slide for "fields" jobs."""
    from pipeline.report import DifferentialReport

    print(DifferentialReport.from_dict(summary).to_table())
    for slide in summary.get("slides", []):
        print(f"\nslide {slide['slide']}: {slide['n_fields']} fields, {slide['n_fields_without_wbc']} without a white cell")
        print(DifferentialReport.from_dict(slide).to_table())


def cmd_status(args) -> int:
    print(json.dumps(_client(args).job(args.job_id), indent=2))
    return 0


def cmd_report(args) -> int:
    text = _client(args).report(args.job_id, args.format)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_serve(args) -> int:
    from api import create_app
    from db.migrate import upgrade

    settings = Settings.from_env()
    app = create_app(settings, bind_host=args.host)  # refuses a non-local bind without tokens
    upgrade(settings.resolved_database_url)
    app.run(host=args.host, port=args.port, threaded=True)
    return 0


def cmd_token(args) -> int:
    from api.auth import new_token

    token, entry = new_token(args.name, args.admin)
    print(f"token for {args.name!r} (shown once; the server stores only its hash):\n  {token}\n"
          f"add to HEMATOVISION_API_TOKENS (comma-separated):\n  {entry}")
    return 0


def cmd_flower(args) -> int:
    """Flower, the Celery monitor, behind HTTP basic auth (refused without credentials unless anonymous is allowed)."""
    import os

    settings = Settings.from_env()
    auth = settings.flower_auth or os.environ.get("FLOWER_BASIC_AUTH", "")
    if not auth and not settings.allow_anonymous:
        raise ValueError("set HEMATOVISION_FLOWER_AUTH=user:password (or HEMATOVISION_ALLOW_ANONYMOUS=1) to run Flower")
    env = {**os.environ, "FLOWER_BASIC_AUTH": auth} if auth else dict(os.environ)
    os.execvpe(sys.executable, [sys.executable, "-m", "celery", "-A", "worker.make_celery", "flower", f"--port={args.port}"], env)
    return 0  # not reached


def cmd_worker(args) -> int:
    from worker.make_celery import celery_app

    argv = ["worker", f"--loglevel={args.loglevel}"]
    if args.concurrency:
        argv.append(f"--concurrency={args.concurrency}")
    celery_app.worker_main(argv)
    return 0


def cmd_db(args) -> int:
    from db.migrate import upgrade

    upgrade(Settings.from_env().resolved_database_url)
    print("database is at the latest migration")
    return 0


def cmd_analyze(args) -> int:
    from api.analyze import analyze

    overrides = {"batch_size": args.batch_size} if args.batch_size else {}
    if args.deadline:
        overrides["analyze_deadline"] = args.deadline
    summary = analyze(args.folder, args.output, Settings.from_env(**overrides), progress=not args.quiet, kind=args.kind)
    print_summary(summary)
    print(f"\nreport written to {args.output}/report.json, report.csv and results.csv")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hematovision", description="White-blood-cell differential counts from cell images.")
    parser.add_argument("--api", help="API base URL (default HEMATOVISION_API_URL or http://127.0.0.1:5000)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("submit", help="upload a folder of cell images as a job")
    p.add_argument("folder")
    p.add_argument("--wait", action="store_true", help="show progress and print the report when done")
    p.add_argument("--name")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--kind", choices=("auto", "cells", "fields"), default="auto")
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser("status", help="show a job")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("report", help="download a finished job's report")
    p.add_argument("job_id")
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("serve", help="run the API (development server; use gunicorn api.wsgi:app in production)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("token", help="make a named API token (prints the token once and its hashed settings entry)")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true", help="this token sees every job")
    p.set_defaults(func=cmd_token)
    p = sub.add_parser("flower", help="run Flower (Celery monitor) behind basic auth from HEMATOVISION_FLOWER_AUTH")
    p.add_argument("--port", type=int, default=5555)
    p.set_defaults(func=cmd_flower)
    p = sub.add_parser("worker", help="run a Celery worker")
    p.add_argument("--concurrency", type=int)
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("db", help="apply database migrations")
    p.add_argument("action", choices=("upgrade",))
    p.set_defaults(func=cmd_db)
    p = sub.add_parser("analyze", help="classify a local folder end to end on this machine (embedded setup)")
    p.add_argument("folder")
    p.add_argument("-o", "--output", default="report")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--deadline", type=int, help="give up after this many seconds (exit 3; default HEMATOVISION_ANALYZE_DEADLINE, 3600)")
    p.add_argument("--kind", choices=("auto", "cells", "fields"), default="auto", help="cell crops or whole field images")
    p.set_defaults(func=cmd_analyze)
    return parser


#: Exit codes of ``hematovision``: 1 a failure with a message, 3 a deadline passed, 130 interrupted.
EXIT_FAILED, EXIT_DEADLINE, EXIT_INTERRUPTED = 1, 3, 130


def main(argv: list[str] | None = None) -> int:
    """Run a command; domain errors become one line on stderr and an exit code, never a traceback."""
    args = build_parser().parse_args(argv)
    from api.analyze import AnalyzeError, DeadlineExceeded, Interrupted
    from api.auth import InsecureConfiguration
    from api.client import ApiClientError
    from api.submission import BrokerUnavailable
    from pipeline.intake import IntakeError

    try:
        return args.func(args)
    except DeadlineExceeded as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DEADLINE
    except Interrupted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ApiClientError, AnalyzeError, IntakeError, BrokerUnavailable, InsecureConfiguration, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
