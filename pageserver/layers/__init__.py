"""Layer files, byte-compatible with Neon's storage format version 3 (SPEC section 4).

Modules, bottom up: :mod:`.key` (Key, Lsn, ids, and their limits), :mod:`.value` (Value
encoding and the Test redo), :mod:`.value_check` (the allocation-free Value validator),
:mod:`.batch` (the ``put`` batch check), :mod:`.blob_io` (the page size, the blob-header
codec, the one blob writer, the paged reader), :mod:`.disk_btree` (the index),
:mod:`.summary`, :mod:`.layer_name`, :mod:`.common` (what readers share and the rest of
the server sees: LayerInfo, LayerFileError, opening a layer file), :mod:`.writer` (the
writing protocol and the finish checks of both writers), :mod:`.delta_layer` and
:mod:`.image_layer` (writers and readers), :mod:`.validate` (startup checks) and
:mod:`.cli` (``pageserver layer ...``).
"""
