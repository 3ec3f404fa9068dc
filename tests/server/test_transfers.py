"""choose_transfer: the smallest valid option per (installed artifact, target), ties to the exact and simpler one."""

from __future__ import annotations

from edgefleet.server.manifests import VariantInfo
from edgefleet.server.transfers import DeltaOffer, choose_transfer

V1, V2, Q8, OTHER_BASE_Q8 = "1" * 64, "2" * 64, "3" * 64, "4" * 64
REF = VariantInfo("reference", "ready", V2, "onnx", 1000)
DQ8 = VariantInfo(f"delta-q8@{V1[:12]}", "ready", Q8, "onnx", 1000, base_sha256=V1, of="reference")
DQ8_ELSEWHERE = VariantInfo(f"delta-q8@{'9' * 12}", "ready", OTHER_BASE_Q8, "onnx", 1000, base_sha256="9" * 64,
                            of="reference")


def lookup(rows: dict[tuple[str, str], list[tuple[str, str, int]]]):  # type: ignore[no-untyped-def]
    return lambda a, b: rows.get((a, b), [])


def test_the_smallest_option_wins() -> None:
    rows = {(V1, V2): [("bsdiff4", "b" * 64, 900), ("tensor", "t" * 64, 500)], (V1, Q8): [("tensor", "q" * 64, 120)]}
    chosen = choose_transfer(V1, REF, [REF, DQ8, DQ8_ELSEWHERE], lookup(rows))
    assert (chosen.option, chosen.variant, chosen.bytes) == ("delta-q8", DQ8, 120)
    assert chosen.delta == DeltaOffer(V1, "q" * 64, 120, "tensor")
    exact = choose_transfer(V1, REF, [REF], lookup(rows))
    assert (exact.option, exact.variant, exact.delta) == ("tensor", REF, DeltaOffer(V1, "t" * 64, 500, "tensor"))
    assert exact.public()["ratio"] == 0.5


def test_a_delta_larger_than_the_artifact_is_not_offered_and_ties_go_to_the_simpler_option() -> None:
    rows = {(V1, V2): [("bsdiff4", "b" * 64, 1000), ("tensor", "t" * 64, 1200)]}
    assert choose_transfer(V1, REF, [REF], lookup(rows)).option == "full"
    rows = {(V1, V2): [("bsdiff4", "b" * 64, 700), ("tensor", "t" * 64, 700)]}
    assert choose_transfer(V1, REF, [REF], lookup(rows)).option == "bsdiff4"


def test_a_delta_variant_needs_its_base_and_to_be_ready() -> None:
    rows = {(V1, Q8): [("tensor", "q" * 64, 10)], ("5" * 64, V2): [("bsdiff4", "b" * 64, 600)]}
    elsewhere = choose_transfer("5" * 64, REF, [REF, DQ8], lookup(rows))
    assert (elsewhere.option, elsewhere.bytes) == ("bsdiff4", 600)
    failed = VariantInfo(DQ8.name, "failed", Q8, "onnx", 1000, base_sha256=V1, of="reference")
    assert choose_transfer(V1, REF, [REF, failed], lookup(rows)).option == "full"
    for_another = VariantInfo(DQ8.name, "ready", Q8, "onnx", 1000, base_sha256=V1, of="onnx-opt")
    assert choose_transfer(V1, REF, [REF, for_another], lookup(rows)).option == "full"


def test_what_runs_already_travels_nothing() -> None:
    assert (choose_transfer(V2, REF, [REF], lookup({})).option, choose_transfer(V2, REF, [REF], lookup({})).bytes) == \
        ("installed", 0)
    stays = choose_transfer(Q8, REF, [REF, DQ8], lookup({}))
    assert (stays.option, stays.variant, stays.delta, stays.bytes) == ("installed", DQ8, None, 0)
    fresh = choose_transfer(None, REF, [REF, DQ8], lookup({}))
    assert (fresh.option, fresh.bytes) == ("full", 1000)
