"""slidestock: reproducible stocks of low-resolution whole-slide images from IDC and GDC.

The version is written into every record and decides which slides a new release redoes;
pyproject.toml reads it from here.
"""

__version__ = "0.4.0"
