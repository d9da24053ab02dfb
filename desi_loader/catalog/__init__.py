"""The published catalog, below the loader's control plane and its readers: what a schema
publishes (its columns as their FITS files had them, its files' headers, its sky index, who
serves it over TAP) and the statements that keep what users attached to it.  control/ (the
write side), queries/ and tap/ (the read side) all go through it; it imports neither.
"""
