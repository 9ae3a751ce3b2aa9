"""jobkit's schema revisions, one file per revision (``NNNN_what_it_does.py``)."""
