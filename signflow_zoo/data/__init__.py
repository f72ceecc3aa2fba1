"""Sign data: the ``Clip`` type, feature extraction (``features``), the synthetic generator, file formats
(``formats``), datasets and splits (``loading``, ``datasets``), augmentation and training batches."""
