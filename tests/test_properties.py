"""Property-based tests (hypothesis): the parsers of user input either give the right value or a
ValueError with a message, for any input, and the table readers neither merge nor drop rows."""

import csv
import io
import json
import unicodedata

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transferkit.config import FIELD_NAMES, ConfigError, load_recipe, make_config
from transferkit.data import DataError
from transferkit.data.tables import is_missing_label
from transferkit.data.text import read_text_items
from transferkit.regularizers.spec import parse_regularizer
from transferkit.strategies.plan import plan_strategy

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
STAGES = 6

strategy_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["linear_probe", "full", "two_phase", "partial:", "stages:", "freeze=stages:", "lora:"])
    .flatmap(lambda p: st.text(alphabet="0123456789-,=r.alphadout ", max_size=12).map(lambda s: p + s)),
)


@SETTINGS
@given(strategy_text)
def test_strategy_parser_plans_or_says_why(text):
    try:
        plan = plan_strategy(text, STAGES)
    except ValueError as e:
        assert str(e)
        return
    assert plan.phases
    assert abs(sum(p.fraction for p in plan.phases) - 1.0) < 1e-9
    for p in plan.phases:
        assert set(p.frozen) <= set(range(STAGES))
        assert p.head_only == (set(p.frozen) == set(range(STAGES))) or plan.lora or p.name == "head"


@SETTINGS
@given(st.integers(0, STAGES - 1), st.integers(0, STAGES - 1), st.booleans())
def test_freeze_ranges_are_exact(a, b, prefix):
    text = ("freeze=stages:" if prefix else "stages:") + f"{a}-{b}"
    assert plan_strategy(text, STAGES).phases[0].frozen == list(range(a, b + 1))


finite = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(st.one_of(st.text(max_size=30),
                 st.sampled_from(["l2sp:", "delta:", "bss:", "l2sp:auto", "l2sp:1e+3+"]).flatmap(
                     lambda p: st.text(alphabet="0123456789.,+-eaulto:", max_size=10).map(lambda s: p + s))))
def test_regularizer_parser_parses_or_says_why(text):
    try:
        specs = parse_regularizer(text)
    except ValueError as e:
        assert str(e)
        return
    assert specs and len({s.kind for s in specs}) == len(specs)


@SETTINGS
@given(finite, finite, finite, st.integers(1, 50))
def test_regularizer_round_trip(alpha, beta, eta, k):
    specs = parse_regularizer(f"l2sp:{alpha!r},{beta!r}+bss:{eta!r},{k}")
    assert specs[0].params == {"alpha": alpha, "beta": beta}
    assert specs[1].params == {"eta": eta, "k": k}
    assert parse_regularizer("+".join(str(s) for s in specs)) == specs


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=20))


@SETTINGS
@given(st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=12)), scalars, max_size=6))
def test_recipe_loads_or_names_the_problem(tmp_path, recipe):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    try:
        make_config(load_recipe(path))
    except ConfigError as e:
        assert str(e)


@SETTINGS
@given(st.text(max_size=200))
def test_any_recipe_text_is_a_recipe_or_a_config_error(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_recipe(path)
    except ConfigError as e:
        assert str(e)


cell = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=25)


@SETTINGS
@given(st.lists(st.tuples(cell, cell), min_size=1, max_size=12), st.sampled_from(["csv", "tsv", "jsonl"]),
       st.booleans())
def test_tables_neither_merge_nor_drop_rows(tmp_path, rows, kind, bom):
    path = tmp_path / f"t.{kind}"
    if kind == "jsonl":
        body = "".join(json.dumps({"text": t, "label": lab}, ensure_ascii=False) + "\n" for t, lab in rows)
    else:
        buf = io.StringIO()
        # the csv module's default "\r\n" ends rows (as Excel does), so any "\r" in a field is quoted
        w = csv.writer(buf, delimiter="\t" if kind == "tsv" else ",")
        w.writerow(["text", "label"])
        w.writerows(rows)
        body = buf.getvalue()
    path.write_text(("\ufeff" if bom else "") + body, encoding="utf-8")
    # labels are Unicode NFC (one class however the name was typed, data/tables.py); texts as written
    expected = [(t.strip(), unicodedata.normalize("NFC", lab.strip())) for t, lab in rows
                if t.strip() and not is_missing_label(lab)]
    try:
        items, skipped = read_text_items(path)
    except DataError as e:
        assert not expected and "no usable rows" in str(e)
        return
    assert [(e.x, e.label) for e in items] == expected
    assert len(items) + len(skipped) == len(rows)


@pytest.mark.parametrize("value", ["", " ", "NaN", "nan", "NAN", "None", "none", "N/A", "n/a", "null"])
def test_missing_label_markers(value):
    assert is_missing_label(value)
