import pytest
from titans_testing import TitansInputs


@pytest.fixture
def titans_inputs():
    return TitansInputs
