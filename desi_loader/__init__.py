"""desi-loader: parallel, exact bulk loading of FITS catalogs (DESI DR1) into PostgreSQL."""
__version__ = "0.6.0"


def __getattr__(name: str):
    # lazy: every worker process imports this package; load and query pull in the control
    # plane and astropy.table, which only a caller of these two needs
    if name in ("load", "query", "export", "tap_url"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'desi_loader' has no attribute {name!r}")
