"""Layer files, byte-compatible with Neon's storage format version 3 (SPEC section 4).

Modules, bottom up: :mod:`.key` (Key, Lsn, ids), :mod:`.value` (Value encoding and the
Test redo), :mod:`.blob_io` (blob headers, blob writer, paged reader),
:mod:`.disk_btree` (the index), :mod:`.summary`, :mod:`.layer_name`, :mod:`.common`
(the writing protocol), :mod:`.delta_layer` and :mod:`.image_layer` (writers and
readers), :mod:`.validate` (startup checks) and :mod:`.cli` (``pageserver layer ...``).
"""
