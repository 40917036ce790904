"""Property-based test of the manifest path (issue 17, item 9): a few hundred arbitrary
manifests through the real splitter and the row encoding; the long run is
benchmarks/manifest_fuzz.py."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from tests.unit.manifest_fuzz import FuzzManifest, check, manifests


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(manifests())
def test_every_line_is_one_item_or_the_job_fails_with_a_reason(manifest: FuzzManifest) -> None:
    check(manifest)
