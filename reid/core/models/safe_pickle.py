"""Read a ``torch.save`` file without running any code it names: tensors yes, foreign objects as inert stand-ins.

A Lightning checkpoint pickles more than tensors: ``hyper_parameters`` may hold the training code's own classes
(enums, config objects), and any pickle can name any callable (``os.system``) to be called on load. This module
opens torch's zip format itself (``<archive>/data.pkl`` + one ``<archive>/data/<key>`` record per storage) and
unpickles ``data.pkl`` with :class:`RestrictedUnpickler`:

* tensor rebuilds (``torch._utils._rebuild_tensor_v2`` ...), storages, dtypes, ``torch.Size``, ``OrderedDict``
  and a few inert builtins (``set``, ``frozenset``, ``slice``, ...) are rebuilt;
* every other global becomes a :class:`ForeignObject` subclass named after it: never imported, never called.
  "Calling" one (pickle's REDUCE, NEWOBJ) only records the arguments; BUILD records the state; SETITEMS and
  APPENDS record items. Which names were met is in :attr:`RestrictedUnpickler.foreign`.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import sys
import zipfile
from typing import Any, ClassVar

import torch

from reid.core.errors import CheckpointError

_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
              torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)
}
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}


class _StorageType:
    """What ``torch.<Name>Storage`` unpickles to: only its dtype, read by :meth:`RestrictedUnpickler.persistent_load`."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


# The most a checkpoint of ours may hold: a ResNet-50 Re-ID net is ~25 M parameters (100 MB); these limits are
# far above it and far below what would exhaust a machine's memory.
MAX_TENSOR_ELEMENTS = 1 << 28  # one tensor: 1 GiB of float32
MAX_TENSOR_DIMS = 8
MAX_TOTAL_BYTES = 8 << 30  # every storage record of the archive, uncompressed
MAX_PICKLE_BYTES = 256 << 20  # data.pkl: names, hyper-parameters and tensor headers only


def _check_view(storage: Any, storage_offset: Any, size: Any, stride: Any) -> None:
    """Refuse a tensor view no real checkpoint holds: too many dimensions or elements, negative sizes or strides,
    or elements beyond its storage (a 1-element storage viewed as 1e12 elements with stride 0)."""
    if not isinstance(size, (tuple, list, torch.Size)) or not isinstance(stride, (tuple, list)) \
            or len(size) != len(stride) or len(size) > MAX_TENSOR_DIMS:
        raise pickle.UnpicklingError(f"tensor shape {size!r:.100} / stride {stride!r:.100} is not a tensor's")
    if not all(isinstance(v, int) and v >= 0 for v in (storage_offset, *size, *stride)):
        raise pickle.UnpicklingError(f"tensor shape {list(size)!r:.100}: negative or non-integer sizes")
    numel = 1
    for n in size:
        numel *= n
    if numel > MAX_TENSOR_ELEMENTS:
        raise pickle.UnpicklingError(f"tensor of shape {list(size)!r:.100} ({numel} elements): more than "
                                     f"{MAX_TENSOR_ELEMENTS}, no checkpoint of a Re-ID network holds that")
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if numel else 0
    if numel and last >= storage.size():
        raise pickle.UnpicklingError(f"tensor of shape {list(size)!r:.100} reaches element {last} of a storage "
                                     f"of {storage.size()}")


def _rebuild_tensor(storage: Any, storage_offset: int, size: tuple, stride: tuple) -> torch.Tensor:
    """``torch._utils._rebuild_tensor`` for a view that fits its storage and the limits."""
    _check_view(storage, storage_offset, size, stride)
    return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage: Any, storage_offset: int, size: tuple, stride: tuple, requires_grad: bool,
                       backward_hooks: Any, metadata: Any = None) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` without the pickled backward hooks and metadata (never run them), for a
    view that fits its storage and the limits."""
    tensor = _rebuild_tensor(storage, storage_offset, size, stride)
    tensor.requires_grad = bool(requires_grad)
    return tensor


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool, backward_hooks: Any, state: Any = None
                       ) -> torch.nn.Parameter:
    """``torch._utils._rebuild_parameter[_with_state]`` without hooks or extra state."""
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


def _rebuild_from_type_v2(func: Any, new_type: Any, args: tuple, state: Any) -> Any:
    """``torch._tensor._rebuild_from_type_v2`` limited to plain tensors and Parameters (any other type: the plain
    tensor, its state dropped)."""
    tensor = func(*args)
    if isinstance(tensor, torch.Tensor) and new_type is torch.nn.Parameter:
        return torch.nn.Parameter(tensor, requires_grad=tensor.requires_grad)
    return tensor


def _codecs_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Protocol-2 pickles store ``bytes`` as ``_codecs.encode(str, 'latin1')``; only text codecs are allowed."""
    if not isinstance(text, str) or encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "utf8"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not allowed")
    return text.encode(encoding, errors)


# Globals that are rebuilt for real: functions that only assemble tensors or inert containers.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): torch.Size,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Tensor"): torch.Tensor,
    ("torch", "device"): torch.device,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("_codecs", "encode"): _codecs_encode,
}


class ForeignObject:
    """Inert stand-in for an object of a class (or the result of a callable) that was not imported.

    ``dotted_name`` is the pickled global (``module.qualname``); ``args``/``kwargs`` what pickle would have called
    it with, ``state`` what it would have restored (BUILD), ``items``/``list_items`` what it would have filled in.
    """

    dotted_name: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> ForeignObject:
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, kwargs=kwargs, state=None, items={}, list_items=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls the class: nothing more to do
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)

    def __repr__(self) -> str:
        args = ", ".join(repr(a) for a in self.args)
        return f"<foreign {self.dotted_name}({args})>"


def _short(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str)) or value is None else plain(value)


def plain(obj: Any, depth: int = 0) -> Any:
    """A JSON-safe rendering of an unpickled object (for reports): tensors as ``tensor(dtype, shape)``, a
    :class:`ForeignObject` as ``{"foreign": name, "args": [...], ...}``; deeper than 8 levels: its repr."""
    if depth > 8:
        return repr(obj)[:200]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.Tensor):
        return f"tensor({str(obj.dtype).removeprefix('torch.')}, {list(obj.shape)})"
    if isinstance(obj, ForeignObject):
        out: dict[str, Any] = {"foreign": obj.dotted_name}
        for key in ("args", "kwargs", "state", "items", "list_items"):
            value = getattr(obj, key)
            if value:
                out[key] = plain(value, depth + 1)
        return out
    if isinstance(obj, type) and issubclass(obj, ForeignObject):
        return {"foreign_class": obj.dotted_name}
    if isinstance(obj, dict):
        return {str(k): plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [plain(v, depth + 1) for v in obj]
    if isinstance(obj, (bytes, bytearray)):
        return f"bytes({len(obj)})"
    return repr(obj)[:200]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch ``data.pkl``; storages are read from ``records`` (key -> bytes) on the CPU."""

    def __init__(self, data: bytes, records: dict[str, bytes] | Any | None = None, byteorder: str = sys.byteorder
                 ) -> None:
        """``records``: key -> bytes, or an object with ``size(key)`` (None when absent) and ``read(key)``
        (:class:`_ZipRecords`: a record is read only when a tensor names it, after its size is checked)."""
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self.records = records if records is not None and not isinstance(records, dict) else _DictRecords(
            records or {})
        self.byteorder = byteorder
        self.foreign: dict[str, type[ForeignObject]] = {}
        self._storages: dict[str, torch.storage.TypedStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        """An allowed global, a storage type, or a (cached) :class:`ForeignObject` subclass: never an import."""
        # Protocol-2 pickles (torch.save's default) name Python 3 modules by their Python 2 names (__builtin__).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        dotted = f"{module}.{name}"
        if dotted not in self.foreign:
            self.foreign[dotted] = type(name.rsplit(".", 1)[-1] or "Foreign", (ForeignObject,),
                                        {"dotted_name": dotted, "__module__": __name__})
        return self.foreign[dotted]

    def persistent_load(self, pid: Any) -> torch.storage.TypedStorage:
        """``('storage', storage_type, key, location, numel)`` -> the CPU storage of record ``data/<key>``."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.100}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"persistent id names {storage_type!r:.100}, not a torch storage type")
        key = key.decode() if isinstance(key, bytes) else str(key)
        if key not in self._storages:
            size = self.records.size(key)
            if size is None:
                raise pickle.UnpicklingError(f"storage record data/{key} is missing from the archive")
            if not isinstance(numel, int) or not 0 <= numel <= MAX_TENSOR_ELEMENTS:
                raise pickle.UnpicklingError(f"storage data/{key} of {numel!r:.40} elements: more than "
                                             f"{MAX_TENSOR_ELEMENTS}, no checkpoint of a Re-ID network holds that")
            expected = numel * torch._utils._element_size(storage_type.dtype)
            if size != expected:  # checked before the record is read (or inflated)
                raise pickle.UnpicklingError(f"storage data/{key}: {size} bytes, expected {expected}")
            raw = self.records.read(key)
            if len(raw) != expected:
                raise pickle.UnpicklingError(f"storage data/{key}: {len(raw)} bytes, expected {expected}")
            untyped = (torch.frombuffer(bytearray(raw), dtype=torch.uint8).untyped_storage() if raw
                       else torch.UntypedStorage(0))
            if self.byteorder != sys.byteorder:
                untyped.byteswap(storage_type.dtype)
            self._storages[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=storage_type.dtype,
                                                             _internal=True)
        return self._storages[key]


class _DictRecords:
    """Storage records already in memory (key -> bytes)."""

    def __init__(self, records: dict[str, bytes]) -> None:
        self._records = records

    def size(self, key: str) -> int | None:
        return len(self._records[key]) if key in self._records else None

    def read(self, key: str) -> bytes:
        return self._records[key]


class _ZipRecords:
    """The storage records of a torch zip archive, read one by one when a tensor names them: their sizes come from
    the zip's directory, so a record is never inflated before it is known to hold what its tensor says."""

    def __init__(self, archive: zipfile.ZipFile, folder: str) -> None:
        self._archive = archive
        self._infos = {i.filename[len(folder):]: i for i in archive.infolist() if i.filename.startswith(folder)}
        self.total = sum(i.file_size for i in self._infos.values())

    def size(self, key: str) -> int | None:
        info = self._infos.get(key)
        return None if info is None else info.file_size

    def read(self, key: str) -> bytes:
        with self._archive.open(self._infos[key]) as stream:
            return stream.read(self._infos[key].file_size + 1)


def safe_load(data: bytes, source: str = "<bytes>") -> tuple[Any, list[str]]:
    """The object ``torch.save`` wrote to ``data`` (tensors on the CPU) and the sorted dotted names of the globals
    that became :class:`ForeignObject` stand-ins. Raises CheckpointError when ``data`` is not torch's zip format
    (the legacy pre-1.6 format and TorchScript archives are refused) or does not unpickle."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{source}: not a torch.save zip archive ({e}); legacy (torch < 1.6) "
                              "checkpoints are not supported") from e
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{source}: expected one <archive>/data.pkl in the zip, found {pickles[:5]}")
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}constants.pkl" in names:
            raise CheckpointError(f"{source}: a TorchScript archive, not a torch.save checkpoint")
        records = _ZipRecords(archive, f"{prefix}data/")
        if records.total > MAX_TOTAL_BYTES:
            raise CheckpointError(f"{source}: its tensors would take {records.total} bytes once unpacked, more than "
                                  f"{MAX_TOTAL_BYTES}: no checkpoint of a Re-ID network is that large")
        byteorder = (archive.read(f"{prefix}byteorder").decode().strip() if f"{prefix}byteorder" in names
                     else "little")
        pickle_size = archive.getinfo(pickles[0]).file_size
        if pickle_size > MAX_PICKLE_BYTES:
            raise CheckpointError(f"{source}: its data.pkl is {pickle_size} bytes once unpacked, more than "
                                  f"{MAX_PICKLE_BYTES}: not a checkpoint's")
        unpickler = RestrictedUnpickler(archive.read(pickles[0]), records, byteorder)
        try:
            obj = unpickler.load()
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise CheckpointError(f"{source}: cannot unpickle the checkpoint ({type(e).__name__}: {e})") from e
    return obj, sorted(unpickler.foreign)
