"""The emulated board's inputs, built once per session: the base image (cached across
sessions under /var/cache/edgeflock) and the offline bundle of this tree."""

from __future__ import annotations

import pytest

from tests.board_fixtures import BoardInputs, board_inputs


@pytest.fixture(scope="session")
def arm64_inputs(tmp_path_factory: pytest.TempPathFactory) -> BoardInputs:
    return board_inputs(tmp_path_factory.mktemp("arm64-inputs"))
