import pytest
from eval_checkpoints import trained


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    return trained(tmp_path_factory)
