"""numpy dtypes that mirror the C records, built from the structs' real offsets."""

import numpy as np

from fastpath import core


def _dtype(layout: tuple[dict[str, tuple[int, str]], int]) -> np.dtype:
    fields, itemsize = layout
    names = list(fields)
    return np.dtype({
        "names": names,
        "formats": [fields[n][1] for n in names],
        "offsets": [fields[n][0] for n in names],
        "itemsize": itemsize,
    })


EVENT_DTYPE = _dtype(core._layout_event())
DEVICE_DTYPE = _dtype(core._layout_device())
DECODED_DTYPE = _dtype(core._layout_decoded())
