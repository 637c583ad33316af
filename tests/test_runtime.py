"""Tests for medclass.runtime: process-wide tuning."""

from __future__ import annotations

from medclass.runtime import tune_cpu_malloc


def test_malloc_tuning_respects_the_environment(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "8589934592")
    assert tune_cpu_malloc() is False  # the user's own setting wins
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert tune_cpu_malloc() in (True, False)  # True on glibc; never raises
