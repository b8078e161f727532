from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny starter model (seconds to build): the base every training test starts from."""
    from inference.starter import build_starter_model

    return build_starter_model(tmp_path_factory.mktemp("models") / "tiny", size="tiny", seed=0, log=lambda _m: None)
