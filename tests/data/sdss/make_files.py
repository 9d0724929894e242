"""Regenerate the crafted SDSS test files of this folder (see README.md).

Run from the repository root: ``python tests/data/sdss/make_files.py``. Uses numpy and astropy
only (not keras_astro), so the files are an independent check of keras_astro.io.sdss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

HERE = Path(__file__).resolve().parent
COLUMNS = (
    "z,ra,dec,specObjID,bestObjID,fluxObjID,targetObjID,plate,class,subClass,zErr,"
    "petroMag_u,petroMag_g,petroMag_r,petroMag_i,petroMag_z,"
    "petroMagErr_u,petroMagErr_g,petroMagErr_r,petroMagErr_i,petroMagErr_z,mjd,fiberID,run2d"
)


def specobjid(plate: int, mjd: int, fiber: int, run2d: str) -> int:
    """SDSS DR8+ bit layout, written out independently of keras_astro."""
    if run2d.startswith("v"):
        a, b, c = (int(x) for x in run2d[1:].split("_"))
        code = (a - 5) * 10000 + b * 100 + c
    else:
        code = int(run2d)
    return (plate << 50) | (fiber << 38) | ((mjd - 50000) << 24) | (code << 10)


def skyserver_csv(cls: str, n: int, seed: int, duplicate: int | None = None) -> str:
    rng = np.random.default_rng(seed)
    subclasses = {
        "GALAXY": ["", "", "", "STARFORMING", "STARBURST", "AGN", "STARBURST BROADLINE", "AGN BROADLINE"],
        "QSO": ["", "BROADLINE", "BROADLINE", "STARBURST BROADLINE"],
        "STAR": ["K1", "M2V", "F9", "A0", "WD", "CV", "G2", "Carbon"],
    }[cls]
    lines = ["#Table1", COLUMNS]
    for i in range(n):
        legacy = rng.random() < 0.4
        if legacy:
            plate, mjd, run2d = int(rng.integers(266, 3000)), int(rng.integers(51600, 54600)), "26"
        else:
            plate, mjd, run2d = int(rng.integers(3600, 12500)), int(rng.integers(55200, 58900)), "v5_13_2"
        fiber = int(rng.integers(1, 640 if legacy else 1000))
        z = {"GALAXY": rng.uniform(0.01, 0.7), "QSO": rng.uniform(0.3, 4.5), "STAR": rng.normal(0, 2e-4)}[cls]
        ra, dec = rng.uniform(0, 360), rng.uniform(-10, 70)
        best = 1237645000000000000 + int(rng.integers(0, 40_000_000_000_000))
        mags = rng.uniform(16.5, 22.5, 5) + np.array([1.2, 0.5, 0.0, -0.2, -0.3])
        errs = rng.uniform(0.005, 0.4, 5)
        if i == 3:  # SDSS writes -9999 for a missing Petrosian measurement
            mags[0], errs[0] = -9999.0, -9999.0
        row = [
            f"{z:.7g}", f"{ra:.8f}", f"{dec:.8f}", str(specobjid(plate, mjd, fiber, run2d)), str(best), str(best),
            str(best if rng.random() < 0.7 else 0), str(plate), cls, subclasses[i % len(subclasses)],
            f"{abs(rng.normal(0, 1e-4)) + 1e-5:.6g}",
            *(f"{m:.5f}" for m in mags), *(f"{e:.6f}" for e in errs), str(mjd), str(fiber), run2d,
        ]
        lines.append(",".join(row))
        if duplicate is not None and i == duplicate:
            lines.append(",".join(row))
    return "\n".join(lines) + "\n"


def spec_file(path: Path, *, plate: int, mjd: int, fiber: int, run2d: str, loglam0: float, n: int,
              cls: str, subclass: str, z: float, seed: int) -> None:
    """A spec-PLATE-MJD-FIBER.fits "lite" file with a short coverage of n pixels."""
    rng = np.random.default_rng(seed)
    loglam = (loglam0 + 1e-4 * np.arange(n)).astype(np.float32)
    flux = (10 + 3 * np.sin(np.arange(n) / 25.0) + rng.normal(0, 0.5, n)).astype(np.float32)
    ivar = np.full(n, 4.0, np.float32)
    and_mask = np.zeros(n, np.int32)
    ivar[100:110] = 0.0  # a masked stretch
    and_mask[100:110] = (1 << 23) | (1 << 16)  # BRIGHTSKY | FULLREJECT
    and_mask[200] = 1 << 4  # a harmless bit (not in spectra.yaml's bad bits)
    primary = fits.PrimaryHDU()
    h = primary.header
    h["TELESCOP"] = "SDSS 2.5-M"
    h["PLATEID"] = plate
    h["MJD"] = mjd
    h["FIBERID"] = fiber
    h["RUN2D"] = run2d
    ra, dec = 150.0 + seed, 2.0 + seed / 10
    h["PLUG_RA"] = ra
    h["PLUG_DEC"] = dec
    coadd = fits.BinTableHDU.from_columns(
        [
            fits.Column("flux", "E", array=flux),
            fits.Column("loglam", "E", array=loglam),
            fits.Column("ivar", "E", array=ivar),
            fits.Column("and_mask", "J", array=and_mask),
            fits.Column("or_mask", "J", array=and_mask),
            fits.Column("wdisp", "E", array=np.full(n, 1.1, np.float32)),
            fits.Column("sky", "E", array=np.full(n, 3.0, np.float32)),
            fits.Column("model", "E", array=flux),
        ],
        name="COADD",
    )
    sid = str(specobjid(plate, mjd, fiber, run2d))
    specobj = fits.BinTableHDU.from_columns(
        [
            fits.Column("PROGRAMNAME", "16A", array=np.array(["legacy" if run2d == "26" else "eboss"])),
            fits.Column("PLATE", "J", array=np.array([plate], np.int32)),
            fits.Column("MJD", "J", array=np.array([mjd], np.int32)),
            fits.Column("FIBERID", "J", array=np.array([fiber], np.int32)),
            fits.Column("RUN2D", "7A", array=np.array([run2d])),
            fits.Column("PLUG_RA", "D", array=np.array([ra])),
            fits.Column("PLUG_DEC", "D", array=np.array([dec])),
            fits.Column("CLASS", "6A", array=np.array([cls])),
            fits.Column("SUBCLASS", "21A", array=np.array([subclass])),
            fits.Column("Z", "E", array=np.array([z], np.float32)),
            fits.Column("Z_ERR", "E", array=np.array([2.5e-4], np.float32)),
            fits.Column("ZWARNING", "J", array=np.array([0], np.int32)),
            fits.Column("SN_MEDIAN", "5E", array=np.array([[4.0, 5.0, 6.0, 5.5, 4.5]], np.float32)),
            fits.Column("SN_MEDIAN_ALL", "E", array=np.array([5.25], np.float32)),
            fits.Column("SPECOBJID", "19A" if len(sid) <= 19 else f"{len(sid)}A", array=np.array([sid])),
        ],
        name="SPECOBJ",
    )
    spzline = fits.BinTableHDU.from_columns(
        [
            fits.Column("LINENAME", "13A", array=np.array(["Ly_alpha", "C_IV 1549"])),
            fits.Column("LINEWAVE", "D", array=np.array([1215.67, 1549.48])),
            fits.Column("LINEZ", "E", array=np.array([z, z], np.float32)),
        ],
        name="SPZLINE",
    )
    fits.HDUList([primary, coadd, specobj, spzline]).writeto(path, overwrite=True)


def dr16q(path: Path) -> None:
    """31 rows covering every case of the FNet split (see README.md)."""
    rows = []
    # (CLASS_PERSON, IS_QSO_DR12Q, Z_DR12Q set?, Z_QN failed?) x count
    cases = (
        [(3, 1, True, False)] * 19  # DR12Q VI quasars -> train/val
        + [(3, 1, True, True)]  # a DR12Q VI quasar QuasarNET failed on -> train/val and qn_fail
        + [(3, -1, False, False)] * 4  # VI quasars new in DR16Q -> test
        + [(3, -1, False, True)] * 2  # new VI quasars with Z_QN = -1 -> test and qn_fail
        + [(30, -1, False, True)]  # a new BAL quasar (QuasarNET failed) -> only with class_person=(3, 30)
        + [(1, -1, False, False)]  # a star
        + [(1, 0, True, False)]  # in DR12Q but not a quasar there, VI star
        + [(0, -1, False, False)] * 2  # not inspected (pipeline quasars)
    )
    rng = np.random.default_rng(16)
    for i, (cp, isq, in12, qnfail) in enumerate(cases):
        z = float(rng.uniform(0.5, 4.0))
        vi = cp != 0
        rows.append(
            dict(
                SDSS_NAME=f"{i:02d}0000.00+000000.0",
                RA=float(rng.uniform(0, 360)),
                DEC=float(rng.uniform(-5, 60)),
                PLATE=int(rng.integers(3600, 11000)) if not in12 else int(rng.integers(3600, 7000)),
                MJD=int(rng.integers(55200, 58500)),
                FIBERID=int(rng.integers(1, 1000)),
                Z=z,
                Z_VI=z if vi else -1.0,
                Z_CONF=3 if vi else -1,
                Z_QN=-1.0 if qnfail else z + 0.001,
                CLASS_PERSON=cp,
                Z_DR12Q=z if in12 else -1.0,
                IS_QSO_DR12Q=isq,
            )
        )
    cols = [
        fits.Column("SDSS_NAME", "18A", array=np.array([r["SDSS_NAME"] for r in rows])),
        fits.Column("RA", "D", array=np.array([r["RA"] for r in rows])),
        fits.Column("DEC", "D", array=np.array([r["DEC"] for r in rows])),
        fits.Column("PLATE", "J", array=np.array([r["PLATE"] for r in rows], np.int32)),
        fits.Column("MJD", "J", array=np.array([r["MJD"] for r in rows], np.int32)),
        fits.Column("FIBERID", "I", array=np.array([r["FIBERID"] for r in rows], np.int16)),
        fits.Column("AUTOCLASS_PQN", "6A", array=np.array(["QSO"] * len(rows))),
        fits.Column("Z_QN", "D", array=np.array([r["Z_QN"] for r in rows])),
        fits.Column("Z_VI", "D", array=np.array([r["Z_VI"] for r in rows])),
        fits.Column("Z_CONF", "I", array=np.array([r["Z_CONF"] for r in rows], np.int16)),
        fits.Column("CLASS_PERSON", "I", array=np.array([r["CLASS_PERSON"] for r in rows], np.int16)),
        fits.Column("Z_DR12Q", "D", array=np.array([r["Z_DR12Q"] for r in rows])),
        fits.Column("IS_QSO_DR12Q", "I", array=np.array([r["IS_QSO_DR12Q"] for r in rows], np.int16)),
        fits.Column("Z", "D", array=np.array([r["Z"] for r in rows])),
        fits.Column("PSFMAG", "5E", array=rng.uniform(17, 22, (len(rows), 5)).astype(np.float32)),
    ]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="CATALOG")]).writeto(path, overwrite=True)


def main() -> None:
    (HERE / "skyserver_qso.csv").write_text(skyserver_csv("QSO", 20, seed=1, duplicate=5))
    (HERE / "skyserver_star.csv").write_text(skyserver_csv("STAR", 6, seed=2))
    (HERE / "skyserver_galaxy.csv").write_text(skyserver_csv("GALAXY", 30, seed=3))
    spec_file(HERE / "spec-10445-58158-0427.fits", plate=10445, mjd=58158, fiber=427, run2d="v5_13_2",
              loglam0=3.5525, n=600, cls="QSO", subclass="BROADLINE", z=2.3456, seed=1)
    spec_file(HERE / "spec-0266-51602-0003.fits", plate=266, mjd=51602, fiber=3, run2d="26",
              loglam0=3.5800, n=600, cls="GALAXY", subclass="STARFORMING", z=0.0213, seed=2)
    dr16q(HERE / "dr16q_small.fits")


if __name__ == "__main__":
    main()
