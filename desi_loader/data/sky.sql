-- Cone search on the hpx29 column (nested HEALPix, order 29) with a plain B-tree.
-- Installed by desi-loader into the schema of every table with a sky index ({s}).
--
--   SELECT t.* FROM {s}.hpx_cone(ra0, dec0, radius_deg) c
--   JOIN {s}.fastspecfit_metadata t ON t.hpx29 BETWEEN c.lo AND c.hi
--   WHERE {s}.angdist(t.ra, t.dec, ra0, dec0) <= radius_deg;
--
-- hpx_cone covers the cone with pixels at the deepest order whose pixels are at least
-- as large as the radius (about 10-30 pixels), found by descending from the 12 base
-- pixels and keeping those whose centre lies within radius + the pixel's largest
-- centre-to-corner angle (a superset, never a miss), then turns them into merged ranges
-- of order-29 pixels.  The WHERE clause makes the result exact.

CREATE OR REPLACE FUNCTION {s}.angdist(ra1 float8, dec1 float8, ra2 float8, dec2 float8)
RETURNS float8 LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT degrees(2 * asin(sqrt(least(1.0,
      sin(radians(dec2 - dec1) / 2) ^ 2 + cos(radians(dec1)) * cos(radians(dec2)) * sin(radians(ra2 - ra1) / 2) ^ 2))))
$$;

COMMENT ON FUNCTION {s}.angdist(float8, float8, float8, float8) IS
  'angular distance in degrees between (ra1, dec1) and (ra2, dec2), haversine formula (desi-loader)';

CREATE OR REPLACE FUNCTION {s}.hpx_max_pixrad(ord int)
RETURNS float8 LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT {s}.angdist(degrees(pi() / (4 * (1::bigint << ord))), degrees(asin(2.0 / 3.0)),
                     0, degrees(asin(1 - (1 - 1.0 / (1::bigint << ord)) ^ 2 / 3)))
$$;

CREATE OR REPLACE FUNCTION {s}.hpx_center(pix bigint, ord int, OUT ra_c float8, OUT dec_c float8)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
  nside bigint := 1::bigint << ord;
  npface bigint := nside * nside;
  face int := (pix / npface)::int;
  ipf bigint := pix % npface;
  ix bigint := 0;
  iy bigint := 0;
  jrll int[] := '{2,2,2,2,3,3,3,3,4,4,4,4}';
  jpll int[] := '{1,3,5,7,0,2,4,6,1,3,5,7}';
  nl4 bigint := 4 * nside;
  fact2 float8 := 4.0 / (12.0 * npface);
  jr bigint; nr bigint; jp bigint; z float8; kshift int;
BEGIN
  FOR i IN 0 .. ord - 1 LOOP
    ix := ix | (((ipf >> (2 * i)) & 1) << i);
    iy := iy | (((ipf >> (2 * i + 1)) & 1) << i);
  END LOOP;
  jr := jrll[face + 1] * nside - ix - iy - 1;
  IF jr < nside THEN
    nr := jr; z := 1 - nr * nr * fact2; kshift := 0;
  ELSIF jr > 3 * nside THEN
    nr := nl4 - jr; z := nr * nr * fact2 - 1; kshift := 0;
  ELSE
    nr := nside; z := (2 * nside - jr) * (2 * nside * fact2); kshift := ((jr - nside) & 1)::int;
  END IF;
  jp := (jpll[face + 1] * nr + ix - iy + 1 + kshift) / 2;
  IF jp > nl4 THEN jp := jp - nl4; END IF;
  IF jp < 1 THEN jp := jp + nl4; END IF;
  ra_c := degrees((jp - (kshift + 1) * 0.5) * (pi() / 2 / nr));
  dec_c := degrees(asin(z));
END
$$;

CREATE OR REPLACE FUNCTION {s}.hpx_cone(ra0 float8, dec0 float8, radius float8)
RETURNS TABLE (lo bigint, hi bigint)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE ROWS 16 AS $$
DECLARE
  target int := 0;
  cur bigint[] := ARRAY[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]::bigint[];
  keep bigint[];
  margin float8;
  p bigint;
  shift int;
  run_lo bigint := NULL;
  run_hi bigint;
BEGIN
  IF radius < 0 THEN
    RETURN;
  END IF;
  WHILE target < 29 AND {s}.hpx_max_pixrad(target + 1) >= radius LOOP
    target := target + 1;
  END LOOP;
  FOR ord IN 0 .. target LOOP
    margin := radius + {s}.hpx_max_pixrad(ord) * 1.000001 + 1e-9;
    SELECT coalesce(array_agg(q.pix ORDER BY q.pix), '{}') INTO keep
      FROM unnest(cur) AS q(pix), LATERAL {s}.hpx_center(q.pix, ord) AS c
     WHERE {s}.angdist(c.ra_c, c.dec_c, ra0, dec0) <= margin;
    IF ord < target THEN
      SELECT coalesce(array_agg(4 * k + d), '{}') INTO cur FROM unnest(keep) AS k, generate_series(0, 3) AS d;
    END IF;
  END LOOP;
  shift := 2 * (29 - target);
  FOREACH p IN ARRAY keep LOOP
    IF run_lo IS NOT NULL AND (p << shift) = run_hi + 1 THEN
      run_hi := ((p + 1) << shift) - 1;
    ELSE
      IF run_lo IS NOT NULL THEN
        lo := run_lo; hi := run_hi; RETURN NEXT;
      END IF;
      run_lo := p << shift;
      run_hi := ((p + 1) << shift) - 1;
    END IF;
  END LOOP;
  IF run_lo IS NOT NULL THEN
    lo := run_lo; hi := run_hi; RETURN NEXT;
  END IF;
END
$$;

COMMENT ON FUNCTION {s}.hpx_cone(float8, float8, float8) IS
  'ranges [lo, hi] of hpx29 pixels covering the cone (ra0, dec0, radius in degrees): join on hpx29 BETWEEN lo AND hi, then filter with angdist (desi-loader)';
