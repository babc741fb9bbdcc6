"""Importing MACE without the two notices that mace-torch 0.3 and e3nn 0.4 print on import.

``import mace`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the process, so e3nn's ``torch.load`` of its own
constants (``e3nn/o3/_wigner.py``, run when e3nn is first imported) warns that weights_only was forced off; and
``mace.tools.cg`` prints (to stdout, not as a warning) that cuEquivariance is not installed. Neither is about
anything a user did. :func:`quiet_mace_import` hides exactly those two around the statements that import MACE;
any other warning or output passes through. Building a model makes torch.jit warn once per e3nn linear layer about
e3nn's generated code: :func:`quiet_mace_build` hides exactly that warning around the constructor.

No AiiDA import: used by the engines on compute nodes and by the CLI process.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from collections.abc import Iterator

__all__ = ('CUEQUIVARIANCE_NOTICE', 'E3NN_WEIGHTS_ONLY_WARNING', 'TORCHSCRIPT_ANNOTATION_WARNING', 'quiet_mace_build',
           'quiet_mace_import')

#: torch's UserWarning when e3nn loads its constants while ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set (a regex).
E3NN_WEIGHTS_ONLY_WARNING = r'Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected, since the\s*`weights_only`'
#: The module the warning is attributed to (its ``torch.load`` call).
E3NN_WEIGHTS_ONLY_MODULE = r'e3nn\.o3\._wigner\Z'
#: The line ``mace.tools.cg`` prints when cuequivariance is not installed.
CUEQUIVARIANCE_NOTICE = (
    'cuequivariance or cuequivariance_torch is not available. Cuequivariance acceleration will be disabled.'
)


#: torch.jit's UserWarning, once per e3nn ``o3.Linear`` that e3nn scripts while a MACE model is built (a regex).
TORCHSCRIPT_ANNOTATION_WARNING = (
    r"The TorchScript type system doesn't support instance-level annotations on empty non-base types in `__init__`"
)


@contextlib.contextmanager
def quiet_mace_build() -> Iterator[None]:
    """Build a MACE model in the block without torch.jit's warning about e3nn's generated code (one per linear
    layer, dozens per model: e3nn scripts the code it generates, and TorchScript warns about an annotation in it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=TORCHSCRIPT_ANNOTATION_WARNING, category=UserWarning)
        yield


@contextlib.contextmanager
def quiet_mace_import() -> Iterator[None]:
    """Run the import statements of the block without the two notices MACE's import makes (see the module doc).

    Used as ``with quiet_mace_import(): from mace... import ...``. Once MACE and e3nn are imported, later imports print
    nothing anyway; a block that imports nothing new changes nothing.
    """
    captured = io.StringIO()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message=E3NN_WEIGHTS_ONLY_WARNING, category=UserWarning,
                                    module=E3NN_WEIGHTS_ONLY_MODULE)
            with contextlib.redirect_stdout(captured):
                yield
    finally:
        text = captured.getvalue()
        kept = ''.join(line for line in text.splitlines(keepends=True) if line.rstrip('\n') != CUEQUIVARIANCE_NOTICE)
        if kept:
            sys.stdout.write(kept)
