"""Analyses of weights and statistics: singular-value spectra and the SVD-drop metric."""
