"""desi-loader: parallel, exact bulk loading of FITS catalogs (DESI DR1) into PostgreSQL."""
__version__ = "0.1.0"
