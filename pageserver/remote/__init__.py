"""Remote storage (SPEC section 10): object-store backends (``local_path``, S3), the
``index_part.json`` codec and object layout, generations, the per-timeline upload queue,
and on-demand downloads. The tenant room drives it; it never imports the tenant room."""
