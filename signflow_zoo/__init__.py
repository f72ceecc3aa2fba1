"""signflow-zoo: a model zoo and benchmark harness for SignFlow's sign-language transformers."""

__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402  - the public marker plugins use

__all__ = ["hookimpl", "__version__"]
