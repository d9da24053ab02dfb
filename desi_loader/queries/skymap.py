"""A table's coverage drawn as a sky map a person reads at a glance: a Mollweide projection of
the rows per square degree in each HEALPix cell, the coverage's outline, the Galactic plane,
RA/Dec gridlines with labels, a colour bar with its unit, the table and its figures in the
title.  RA increases to the left, as on the sky.  matplotlib (the ``sky`` extra)."""
from __future__ import annotations


import numpy as np

from ..errors import UsageError
from ..sky import ang2pix
from .coverage import Coverage

#: samples of the map along RA and Dec (half a degree: finer than the cells of order 6)
GRID_RA, GRID_DEC = 1440, 720


def _x(ra_deg: np.ndarray) -> np.ndarray:
    """Mollweide longitude (radians) of RA: 180 in the middle, RA increasing to the left."""
    return np.pi - np.radians(np.mod(ra_deg, 360.0))


def density_grid(cov: Coverage) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RA, Dec, rows per deg2 or NaN outside the coverage) sampled on the map's grid."""
    ra = (np.arange(GRID_RA) + 0.5) * 360.0 / GRID_RA
    dec = (np.arange(GRID_DEC) + 0.5) * 180.0 / GRID_DEC - 90.0
    gra, gdec = np.meshgrid(ra, dec)
    pix, _ = ang2pix(gra.ravel(), gdec.ravel(), cov.order)
    where = np.searchsorted(cov.cells, pix)
    inside = (where < len(cov.cells)) & (cov.cells[np.minimum(where, len(cov.cells) - 1)] == pix) \
        if len(cov.cells) else np.zeros(pix.shape, bool)
    values = np.full(pix.shape, np.nan)
    values[inside] = cov.counts[where[inside]] / cov.cell_deg2
    return gra, gdec, values.reshape(gra.shape)


def _galactic_plane() -> tuple[np.ndarray, np.ndarray]:
    from astropy.coordinates import SkyCoord
    import astropy.units as u
    plane = SkyCoord(l=np.linspace(0, 360, 721) * u.deg, b=np.zeros(721) * u.deg, frame="galactic").icrs
    x, y = _x(plane.ra.deg), np.radians(plane.dec.deg)
    order = np.argsort(x)
    return x[order], y[order]


def draw(cov: Coverage, path: str) -> None:
    """Write the map of ``cov`` to ``path`` (PNG or PDF, by its extension)."""
    try:
        from matplotlib.colors import LogNorm
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise UsageError("drawing a sky map needs matplotlib", "pip install 'desi-loader[sky]'") from exc
    gra, gdec, values = density_grid(cov)
    fig = Figure(figsize=(11, 6.6), layout="constrained")
    ax = fig.add_subplot(projection="mollweide")
    x, y = _x(gra), np.radians(gdec)
    order = np.argsort(x[0])
    x, y, values = x[:, order], y[:, order], values[:, order]
    masked = np.ma.masked_invalid(values)
    if masked.count():
        low, high = float(masked.min()), float(masked.max())
        mesh = ax.pcolormesh(x, y, masked, shading="auto", cmap="viridis",
                             norm=LogNorm(vmin=low, vmax=max(high, low * 1.01)), rasterized=True)
        fig.colorbar(mesh, ax=ax, orientation="horizontal", shrink=0.6, pad=0.06,
                     label=f"rows per deg² (HEALPix order {cov.order} cells of {cov.cell_deg2:.3g} deg²)")
        ax.contour(x, y, (~masked.mask).astype(float), levels=[0.5], colors="black", linewidths=0.6)
    gx, gy = _galactic_plane()
    ax.plot(gx, gy, color="tab:red", linestyle="--", linewidth=1.0, label="Galactic plane")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ticks = [330, 300, 270, 240, 210, 180, 150, 120, 90, 60, 30]
    ax.set_xticks(_x(np.array(ticks, float)))
    ax.set_xticklabels([f"{t}°" for t in ticks], fontsize=8)
    ax.set_yticks(np.radians([-60, -30, 0, 30, 60]))
    ax.set_yticklabels(["−60°", "−30°", "0°", "+30°", "+60°"], fontsize=8)
    ax.grid(True, color="0.6", linewidth=0.4, alpha=0.7)
    ax.set_xlabel("RA (ICRS)")
    ax.set_ylabel("Dec")
    ax.set_title(f"{cov.schema}.{cov.table}: {cov.rows:,} rows over {cov.area_deg2:,.0f} deg² "
                 f"({100 * cov.sky_fraction:.1f} % of the sky)", fontsize=11)
    fig.savefig(path, dpi=110)
