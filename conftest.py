"""Doctests in src/ see ``torch`` and ``ff`` without importing them in every example."""

import pytest
import torch

import flowforge


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace["torch"] = torch
    doctest_namespace["ff"] = flowforge
