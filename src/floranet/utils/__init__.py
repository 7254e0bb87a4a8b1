"""Utilities with no floranet logic of their own: atomic files, downloads, optional imports, figures, system."""
