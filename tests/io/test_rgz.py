"""The shipped RGZ catalogue reproduces CLARAN's Tables 2-3; positions, boxes and bad input."""

import numpy as np
import pytest

from keras_astro import specs
from keras_astro.io import rgz


@pytest.fixture(scope="module")
def cat():
    return rgz.load_catalogue()


def test_catalogue_is_shipped_inside_the_package():
    p = rgz.catalogue_path()
    assert p.is_file() and "keras_astro" in p.parts and p.suffix == ".csv"


def test_table2_totals(cat):
    t2 = specs.load_spec("rgz")["table2"]
    assert len(cat) == 10744 and len(cat.sources) == 11836
    for split, key in (("train", "train"), ("test", "test")):
        subs = cat.split(split)
        assert len(subs) == t2[key]["subjects"]
        assert sum(len(s.sources) for s in subs) == t2[key]["sources"]
        assert sum(s.n_components for s in subs) == t2[key]["components"]
        assert sum(s.n_peaks for s in subs) == t2[key]["peaks"]


def test_table3_per_class_counts(cat):
    t3 = specs.load_spec("rgz")["table3"]
    tab = cat.table()
    got = tab.groupby(["split", "label"]).size()
    for split in ("train", "test"):
        for cls, n in t3[split].items():
            assert got[(split, cls)] == n, (split, cls)
    assert sorted(tab["label"].unique()) == rgz.class_names()


@pytest.mark.parametrize(
    "name, ra, dec",
    [
        ("FIRSTJ000007.0+081644", 15 * (7.0 / 3600), 8 + 16 / 60 + 44 / 3600),
        ("FIRSTJ131100.4+034608", 15 * (13 + 11 / 60 + 0.4 / 3600), 3 + 46 / 60 + 8 / 3600),
        ("FIRSTJ235959.9-012345", 15 * (23 + 59 / 60 + 59.9 / 3600), -(1 + 23 / 60 + 45 / 3600)),
    ],
)
def test_parse_first_id(name, ra, dec):
    got = rgz.parse_first_id(name)
    assert got == pytest.approx((ra, dec), abs=1e-9)


@pytest.mark.parametrize(
    "bad", ["J000007.0+081644", "FIRSTJ250007.0+081644", "FIRSTJ000007.0*081644", "", "FIRSTJ0000"]
)
def test_unparseable_subject_names(bad):
    with pytest.raises(rgz.CatalogueError, match="subject"):
        rgz.parse_first_id(bad)


def test_every_box_is_inside_and_sized_by_angular_extent(cat):
    subs = cat.stratified_subset(40, seed=1)
    for s in subs:
        ann = rgz.subject_annotations(s)
        assert ann["boxes"].shape == (len(s.sources), 4)
        b = ann["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 3] <= 132).all() and (b[:, 2] > b[:, 0]).all()
        for box, src in zip(b, s.sources):
            side = src.ang_extent / 1.375
            if box.min() > 0 and box.max() < 132:  # unclipped boxes are squares of that side
                assert box[2] - box[0] == pytest.approx(side, rel=1e-3)
                assert box[3] - box[1] == pytest.approx(side, rel=1e-3)


def test_orientation_north_up_east_left():
    s = rgz.Subject(name="FIRSTJ120000.0+300000", ra=180.0, dec=30.0, sources=())
    x0, y0 = rgz.sky_to_pixel(s, 180.0, 30.0)
    assert x0[0] == pytest.approx(66.0, abs=1e-6) and y0[0] == pytest.approx(66.0, abs=1e-6)
    xn, yn = rgz.sky_to_pixel(s, 180.0, 30.0 + 10 * 1.375 / 3600)  # 10 px north -> up (smaller y)
    assert yn[0] == pytest.approx(56.0, abs=0.01) and xn[0] == pytest.approx(66.0, abs=0.01)
    xe, _ = rgz.sky_to_pixel(s, 180.0 + 10 * 1.375 / 3600 / np.cos(np.radians(30)), 30.0)  # east -> left
    assert xe[0] == pytest.approx(56.0, abs=0.01)
    # scaled to 600 px the box scales by 600/132
    src = rgz.Source(1, s.name, 1, 1, (180.0,), (30.0,), 13.75, 1.0, True)
    s2 = rgz.Subject(s.name, 180.0, 30.0, (src,))
    a = rgz.subject_annotations(s2)["boxes"][0]
    np.testing.assert_allclose(a, [61, 61, 71, 71], atol=1e-3)
    np.testing.assert_allclose(rgz.subject_annotations(s2, scale=600 / 132)["boxes"][0], a * 600 / 132, rtol=1e-6)


def test_box_outside_the_image_is_an_error():
    far = rgz.Source(1, "FIRSTJ120000.0+300000", 1, 1, (180.0,), (30.2,), 10.0, 1.0, True)
    s = rgz.Subject("FIRSTJ120000.0+300000", 180.0, 30.0, (far,))
    with pytest.raises(rgz.CatalogueError, match="FIRSTJ120000.0\\+300000.*outside"):
        rgz.subject_annotations(s)


def _write(tmp_path, rows):
    p = tmp_path / "cat.csv"
    p.write_text(
        "catalog_id,first_id,num_cpnts,num_peaks,cpnts_ras,cpnts_decs,ang_extent,cl,training\n" + "\n".join(rows)
    )
    return p


@pytest.mark.parametrize(
    "row, match",
    [
        ("1,FIRSTJ000007.0+081644,2,2,0.03;0.031,8.27,20,0.7,1", "2 RAs but 1 Decs"),
        ("1,FIRSTJ000007.0+081644,2,2,0.03,8.27,20,0.7,1", "lists 1 components, num_cpnts says 2"),
        ("1,BADNAME,1,1,0.03,8.27,20,0.7,1", "BADNAME"),
        ("1,FIRSTJ000007.0+081644,1,1,0.03,8.27,nan,0.7,1", "angular extent"),
        ("1,FIRSTJ000007.0+081644,1,1,abc,8.27,20,0.7,1", "not a ';'-separated list"),
    ],
)
def test_bad_catalogue_rows(tmp_path, row, match):
    with pytest.raises(rgz.CatalogueError, match=match):
        rgz.load_catalogue(_write(tmp_path, [row]))


def test_missing_columns(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("catalog_id,first_id\n1,FIRSTJ000007.0+081644\n")
    with pytest.raises(rgz.CatalogueError, match="missing column"):
        rgz.load_catalogue(p)
