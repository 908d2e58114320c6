"""Fine-tuning, the application on top of the training engine: labelled files (``tasks``), the classifier model
(``model``), what a run is asked to do (``config``), the run itself (``runner``), and a fine-tuned model in use
(``classifier``, ``predict``; its MLflow model is in ``serving``)."""
