"""Training, evaluation and export of the HematoVision cell classifier.

Needs TensorFlow (install the ``train`` extra). Serving does not import this
package: it loads the exported ``models/<name>/`` directory through
``pipeline.classifier``.
"""
