"""Training the default codecs: corpora, models, ``lumo train-codec``."""
