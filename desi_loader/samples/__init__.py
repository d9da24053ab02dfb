"""Sample files with the real data model of each catalog: FastSpecFit (fastspecfit) and
DESIVAST (desivast)."""
