"""Engine: loaders, the one training loop (:mod:`~atomizer.engine.loop`), supervised training,
pretraining, evaluation, inference, metrics and attention maps."""
