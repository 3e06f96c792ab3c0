"""pyrod's files: incremental, crash-safe NetCDF4 output (one file, one group per run) and the readers.

One job per module (``pyrod.output`` re-exports the public names, for code written before the split):

* :mod:`pyrod.io.writer`: :class:`~pyrod.io.writer.RunWriter`, the writer (rows appended and flushed in chunks,
  atomic creation and overwrite, crash safety).
* :mod:`pyrod.io.resume`: copying a file up to a cut, for ``RunWriter.resume`` (continue a stopped run).
* :mod:`pyrod.io.reader`: :func:`~pyrod.io.reader.open_tree`, :func:`~pyrod.io.reader.stored_config`,
  :func:`~pyrod.io.reader.json_attr`; clear errors for foreign, truncated or damaged files
  (:class:`~pyrod.io.reader.DamagedFileError`), salvage of what a killed writer left.
* :mod:`pyrod.io.lock`: one writer per path (the sidecar lock :class:`~pyrod.io.lock.FileBusyError`), reading a
  file while it is written (seqlock), free-space checks (:func:`~pyrod.io.lock.ensure_space`), errors that name the
  user's path.
* :mod:`pyrod.io.layout`: what the writer, the resume copy and the readers share: JSON-encoded attributes, reserved
  root attributes, HDF5 chunk shapes and fill values, the rules of a group's layout.

``Var``, ``TIME_UNITS`` and ``PARAMETER_UNITS`` (what runs declare) live in :mod:`pyrod.schema`.

Layout (docs/architecture.md, "Output schema")::

    /                      root attrs: pyrod_version, created, Conventions="CF-1.11", history, pyrod_status,
                           pyrod_config (JSON of the full config) + flat copies of top-level scalar config items
    /<run>                 one group per run ("discrete", "midpoint", "stable", "rod", "central", ...)
        t(t)               float64, unlimited, long_name "time", units "optimizer steps", axis "T"
        loss(t), eigs(t, eig), ...            rows appended with RunWriter.append (NaN where not measured)
        t_snap(t_snap), w(t_snap, param)      optional snapshot dims appended with RunWriter.append_snapshot
        w0(param)                             optional static variables written once with RunWriter.write_static

Writing and reading::

    from pyrod.io.reader import json_attr, open_tree, stored_config
    from pyrod.io.writer import RunWriter
    from pyrod.schema import Var

    with RunWriter("run.nc", config=cfg) as out:
        out.add_group("discrete", [Var("loss", ("t",), "training loss", "1"),
                                   Var("eigs", ("t", "eig"), "top Hessian eigenvalues", "1")],
                      dims={"eig": 3})
        for k in range(steps):
            out.append("discrete", k, {"loss": loss, "eigs": eigs})   # floats, arrays or torch tensors
        out.set_attrs("discrete", {"events": [ev.as_dict() for ev in events]})

    tree = open_tree("run.nc")          # xarray.DataTree, in memory, file closed
    cfg = stored_config("run.nc")       # dict: the stored JSON spec (pyrod.spec_of gives a RunSpec)
    events = json_attr(tree["discrete"], "events")

    out = RunWriter.resume("run.nc", cut={"discrete": 500.0})   # keep rows t < 500, append from there

The package itself imports nothing: import the module you need.
"""
