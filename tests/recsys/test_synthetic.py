import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys.data.synthetic import (
    EVENTS,
    INTERACTIONS_SCHEMA,
    ITEMS_SCHEMA,
    PRESETS,
    SyntheticConfig,
    build_catalog,
    generate,
    interactions_chunk,
    interactions_per_user,
    main,
)

# Several chunks, so chunking and per-chunk seeding are exercised, yet well under a second.
CFG = SyntheticConfig(n_users=400, n_items=1_000, n_interactions=16_000, n_categories=10, seed=7, users_per_chunk=150)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    paths = generate(CFG, tmp_path_factory.mktemp("synthetic"), progress=False)
    return paths, pd.read_parquet(paths.interactions), pd.read_parquet(paths.items)


def test_same_seed_gives_identical_tables(generated, tmp_path):
    paths, _, _ = generated
    again = generate(CFG, tmp_path, progress=False)
    assert pq.read_table(again.interactions).equals(pq.read_table(paths.interactions))
    assert pq.read_table(again.items).equals(pq.read_table(paths.items))


def test_chunk_does_not_depend_on_the_others(generated):
    paths, _, _ = generated
    last = 2
    alone = interactions_chunk(CFG, build_catalog(CFG), interactions_per_user(CFG), last)
    assert alone.equals(pq.ParquetFile(paths.interactions).read_row_group(last))


def test_different_seeds_differ(generated, tmp_path):
    _, interactions, items = generated
    other = generate(replace(CFG, seed=8), tmp_path, progress=False)
    assert not pd.read_parquet(other.interactions).equals(interactions)
    assert not pd.read_parquet(other.items).equals(items)


def test_schema_and_meta(generated):
    paths, interactions, items = generated
    assert pq.read_schema(paths.interactions).equals(INTERACTIONS_SCHEMA, check_metadata=False)
    assert pq.read_schema(paths.items).equals(ITEMS_SCHEMA, check_metadata=False)
    assert items["item_id"].tolist() == list(range(CFG.n_items))
    assert (items["price"] > 0).all()
    assert items["category"].nunique() == CFG.n_categories
    assert items["title"].str.fullmatch(r"\w+ [\w ]+ #\d+").all()
    assert interactions["item_id"].between(0, CFG.n_items - 1).all()
    meta = json.loads(paths.meta.read_text())
    assert meta["config"]["seed"] == CFG.seed
    assert meta["rows"] == {"interactions": len(interactions), "items": CFG.n_items, "users": CFG.n_users}
    assert sum(meta["events"].values()) == len(interactions)


def test_every_user_has_three_or_more_and_a_heavy_tail(generated):
    _, interactions, _ = generated
    per_user = interactions.groupby("user_id").size()
    assert len(interactions) == CFG.n_interactions
    assert per_user.index.tolist() == list(range(CFG.n_users))
    assert per_user.min() >= 3
    assert per_user.max() > 8 * per_user.median()


def test_events_are_a_funnel(generated):
    _, interactions, _ = generated
    share = interactions["event"].value_counts(normalize=True)
    assert set(share.index) <= set(EVENTS)
    assert share["view"] > 0.8 and share["cart"] > share["purchase"] > 0
    previous = interactions.shift()
    follows = interactions["event"].isin(["cart", "purchase"])
    assert (interactions.loc[follows, "item_id"] == previous.loc[follows, "item_id"]).all()
    assert (interactions.loc[follows, "user_id"] == previous.loc[follows, "user_id"]).all()


def test_timestamps_increase_within_each_user_and_span_the_window(generated):
    _, interactions, _ = generated
    same_user = interactions["user_id"].diff() == 0
    assert (interactions["timestamp"].diff()[same_user] > 0).all()
    span_days = (interactions["timestamp"].max() - interactions["timestamp"].min()) / 86_400
    assert interactions["timestamp"].min() >= CFG.start_time
    assert 0.8 * CFG.days < span_days < CFG.days + 1


def test_item_popularity_is_heavy_tailed(generated):
    _, interactions, _ = generated
    counts = interactions["item_id"].value_counts()
    top_1_percent = counts.iloc[: CFG.n_items // 100].sum() / len(interactions)
    assert top_1_percent > 0.10  # ten times its share under uniform popularity


def _category_counts(interactions, items):
    category = items.set_index("item_id")["category"]
    return pd.crosstab(interactions["user_id"], interactions["item_id"].map(category))


def test_users_concentrate_on_their_own_categories(generated):
    _, interactions, items = generated
    counts = _category_counts(interactions, items).to_numpy()
    top2 = np.argsort(-counts, axis=1)[:, :2]
    stranger = np.random.default_rng(0).permutation(len(counts))
    rows = np.arange(len(counts))[:, None]
    own = (counts[rows, top2].sum(1) / counts.sum(1)).mean()
    # Under random tastes a stranger's favourite categories would fit about as well as one's own.
    strangers = (counts[rows, top2[stranger]].sum(1) / counts.sum(1)).mean()
    assert own > 0.7
    assert own - strangers > 0.3


def _hit_rate(top_items, truth):
    return float(np.mean([t in row for row, t in zip(top_items, truth, strict=True)]))


def test_category_aware_popularity_beats_global_popularity(generated):
    _, interactions, items = generated
    is_last = interactions["user_id"].ne(interactions["user_id"].shift(-1))
    train, last = interactions[~is_last], interactions[is_last]
    item_count = np.bincount(train["item_id"], minlength=CFG.n_items).astype(float)
    item_category = items["category"].astype("category").cat.codes.to_numpy()
    share_in_category = item_count / np.bincount(item_category, weights=item_count)[item_category]
    user_categories = pd.crosstab(train["user_id"], item_category[train["item_id"]]).to_numpy()
    scores = user_categories[:, item_category] * share_in_category  # P(category | user) * P(item | category)
    personal = np.argsort(-scores, axis=1)[:, :10]
    global_top = np.argsort(-item_count)[:10]
    truth = last["item_id"].to_numpy()
    personal_hr = _hit_rate(personal, truth)
    global_hr = _hit_rate([global_top] * len(truth), truth)
    assert personal_hr > 1.5 * global_hr


def _launch_days(items_ids):
    catalog = build_catalog(CFG)
    launch = np.empty(CFG.n_items, np.float32)
    launch[catalog.slot_to_id] = catalog.launch
    return launch[items_ids] / 86_400


def test_launched_items_are_not_seen_before_their_launch_and_peak_soon_after(generated):
    _, interactions, _ = generated
    launch = _launch_days(interactions["item_id"].to_numpy())
    day = (interactions["timestamp"].to_numpy() - CFG.start_time) / 86_400
    new = np.isfinite(launch)
    assert 0.1 < new.mean() < 0.9  # launches are part of the traffic, not all of it
    # Items are drawn at their session's start; a session lasts minutes, not a day.
    assert (day[new] >= launch[new] - 1.0).all()
    age = day[new] - launch[new]
    # Under a flat appeal over the rest of the window, interactions in the first two decay
    # periods would be roughly their share of that window; the boost makes them far more.
    remaining = CFG.days - launch[new]
    early = age < 2 * CFG.launch_decay_days
    flat_share = np.minimum(2 * CFG.launch_decay_days / remaining, 1.0).mean()
    assert early.mean() > 1.5 * flat_share


def test_no_launches_gives_every_item_from_the_start():
    catalog = build_catalog(replace(CFG, new_item_share=0.0))
    assert np.isneginf(catalog.launch).all()


def test_presets_have_the_promised_sizes():
    assert PRESETS["synthetic"].n_interactions == 200_000
    big = PRESETS["synthetic-1m"]
    assert (big.n_items, big.n_interactions) == (1_000_000, 10_000_000)


def test_cli_writes_a_dataset(tmp_path):
    argv = ["--out", str(tmp_path), "--users", "30", "--items", "50", "--interactions", "300"]
    assert main([*argv, "--categories", "4", "--seed", "3", "--no-progress"]) == 0
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["config"]["n_users"] == 30 and meta["config"]["seed"] == 3
    assert pq.read_metadata(tmp_path / "interactions.parquet").num_rows == 300


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "nope"], "invalid choice"),
        (["--users", "many"], "invalid int value"),
        (["--users", "100", "--interactions", "10"], "3 per user"),
    ],
)
def test_cli_rejects_bad_flags(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_log_is_reused_for_its_own_config_and_made_again_for_another(tmp_path):
    from recsys.data.synthetic import ensure_generated

    small = replace(CFG, n_users=40, n_interactions=800)
    first = ensure_generated(small, tmp_path)
    stamp = first.interactions.stat().st_mtime_ns
    assert ensure_generated(small, tmp_path).interactions.stat().st_mtime_ns == stamp
    ensure_generated(replace(small, seed=small.seed + 1), tmp_path)
    assert json.loads(first.meta.read_text())["config"]["seed"] == small.seed + 1
