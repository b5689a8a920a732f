# faiss-cpu ships SWIG-generated stubs that reject valid calls (SearchParametersIVF(nprobe=...),
# PyCallbackIOWriter, DirectMap, index downcasts). mypy reads this stub instead (mypy_path), which
# types every faiss attribute as Any; the project's own code around FAISS stays checked.
from typing import Any

def __getattr__(name: str) -> Any: ...
