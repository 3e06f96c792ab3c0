"""
    PyrodFlows

Integrates one segment of a pyrod flow `du/dt = f(u, t)` whose right-hand side lives in Python
(called back through juliacall) or in Julia. The Python side (`pyrod.integrate.julia_backend`)
calls [`integrate_segment`](@ref) once per segment and turns the returned `NamedTuple` into a
`pyrod.integrate.base.Segment`.

Every callable argument is called with Julia arrays that it fills **in place**, so nothing has to
be converted back from Python: through juliacall a `Vector{Float64}` arrives in Python as a
`juliacall.VectorValue` and `numpy.asarray` of it is a zero-copy view.

  - `rhs!(du, u, t)`: write `f(u, t)` into `du`;
  - `jvp!(Jv, u, v, t)`: write `J(u, t) v` into `Jv` (stiff methods; `nothing` = finite differences);
  - `events!(g, u, t)`: write the event function values into `g` (length `nevents`);
  - `project!(w, t)`: overwrite `w` (a copy of the state) with its projection;
  - `on_accept!(u, t)`: observe the state after every accepted (and projected) step.

Supports OrdinaryDiffEq 6 (SciMLBase 2) and 7 (SciMLBase 3); the version-dependent pieces are
`derivative_discontinuity!` (formerly `u_modified!`) and the `VectorContinuousCallback` `affect!`
argument (an event index in v6, a vector of crossing flags in v7).
"""
module PyrodFlows

using OrdinaryDiffEq: Tsit5, Vern7, Vern9, FBDF
using OrdinaryDiffEqSDIRK: KenCarp47
using SciMLBase:
    SciMLBase,
    ODEFunction,
    ODEProblem,
    VectorContinuousCallback,
    DiscreteCallback,
    CallbackSet,
    terminate!,
    get_proposed_dt,
    ReturnCode
using DiffEqCallbacks: FunctionCallingCallback
using LinearSolve: KrylovJL_GMRES
using ADTypes: AutoFiniteDiff

export integrate_segment, ALGORITHMS

"Algorithm names accepted by [`integrate_segment`](@ref) (non-stiff first)."
const ALGORITHMS = ("Tsit5", "Vern7", "Vern9", "FBDF", "KenCarp47")

# ------------------------------------------------------------------------------------ helpers
@static if isdefined(SciMLBase, :derivative_discontinuity!)
    _no_discontinuity!(integ) = SciMLBase.derivative_discontinuity!(integ, false)
else
    _no_discontinuity!(integ) = SciMLBase.u_modified!(integ, false)
end

"""
    make_algorithm(name; linsolve = :gmres)

The OrdinaryDiffEq algorithm for `name`. Stiff methods (`FBDF`, `KenCarp47`) use
`autodiff = AutoFiniteDiff()` (no Dual numbers can pass through a Python right-hand side) and,
with `linsolve = :gmres`, the Jacobian-free Newton–Krylov path `KrylovJL_GMRES()`, whose
Jacobian–vector products come from `ODEFunction(...; jvp)` when a `jvp!` is given.
`linsolve = :dense` factorises a finite-difference Jacobian instead (small problems only).
"""
function make_algorithm(name::AbstractString; linsolve::Symbol = :gmres)
    name == "Tsit5" && return Tsit5()
    name == "Vern7" && return Vern7()
    name == "Vern9" && return Vern9()
    if name == "FBDF" || name == "KenCarp47"
        ctor = name == "FBDF" ? FBDF : KenCarp47
        if linsolve === :gmres
            return ctor(; linsolve = KrylovJL_GMRES(), autodiff = AutoFiniteDiff())
        elseif linsolve === :dense
            return ctor(; autodiff = AutoFiniteDiff())
        end
        throw(ArgumentError("linsolve=$(repr(linsolve)): use :gmres or :dense"))
    end
    throw(ArgumentError("alg=$(repr(name)) is not one of $(join(ALGORITHMS, ", "))"))
end

# State handed to the callbacks: plain Julia containers, mutated in place.
mutable struct Tracker
    nrhs::Int
    njvp::Int
    nsteps::Int
    last_t::Float64
    last_u::Vector{Float64}
    accepted_t::Float64 # last time on_accept! was called (avoid a double call)
    ev_t::Vector{Float64}
    ev_index::Vector{Int} # 1-based
    ev_value::Vector{Float64}
    terminal_index::Int # 0: none
end

# `rhs!` may be a Python callable: hand it plain Vector{Float64} (zero-copy through juliacall).
function _call_inplace!(fn, out, buf_out, x, buf_x, args...)
    if out isa Vector{Float64} && x isa Vector{Float64}
        fn(out, x, args...)
    else
        copyto!(buf_x, x)
        fn(buf_out, buf_x, args...)
        copyto!(out, buf_out)
    end
    return nothing
end

function _fired_indices(ix)
    ix isa Integer && return [Int(ix)]
    return findall(!iszero, ix)
end

function _event_callback(
    events!,
    nevents,
    directions,
    terminal,
    project!,
    on_accept!,
    tr::Tracker,
)
    gbuf = zeros(nevents)
    gprev_buf = zeros(nevents)
    ubuf = Float64[]
    condition! = function (out, u, t, _integ)
        if out isa Vector{Float64} && u isa Vector{Float64}
            events!(out, u, t)
        else
            resize!(ubuf, length(u))
            copyto!(ubuf, u)
            events!(gbuf, ubuf, t)
            copyto!(out, gbuf)
        end
        return nothing
    end
    affect! = function (integ, ix)
        u = integ.u isa Vector{Float64} ? integ.u : Vector{Float64}(integ.u)
        events!(gbuf, u, integ.t)
        accepted = Int[]
        for i in _fired_indices(ix)
            # RightRootFind: g already has its post-crossing sign, which gives the direction
            # (independent of the sign convention of the v7 flags). At an exact zero, compare
            # with the value at the start of the step.
            g = gbuf[i]
            if g == 0
                events!(gprev_buf, Vector{Float64}(integ.uprev), integ.tprev)
                dir = gprev_buf[i] < 0 ? 1 : -1
            else
                dir = g > 0 ? 1 : -1
            end
            (directions[i] == 0 || directions[i] == dir) && push!(accepted, i)
        end
        term = 0
        for i in accepted
            push!(tr.ev_t, integ.t)
            push!(tr.ev_index, i)
            push!(tr.ev_value, gbuf[i])
            (terminal[i] && term == 0) && (term = i)
        end
        if term != 0
            tr.terminal_index = term
            if project! !== nothing
                # the segment ends on a projected state
                w = Vector{Float64}(integ.u)
                project!(w, integ.t)
                copyto!(integ.u, w)
            end
            tr.last_t = integ.t
            copyto!(tr.last_u, integ.u)
            if on_accept! !== nothing && integ.t != tr.accepted_t
                on_accept!(copy(tr.last_u), integ.t)
                tr.accepted_t = integ.t
            end
            terminate!(integ)
        end
        _no_discontinuity!(integ)
        return nothing
    end
    return VectorContinuousCallback(
        condition!,
        affect!,
        nevents;
        rootfind = SciMLBase.RightRootFind,
        save_positions = (false, false),
        interp_points = 10,
    )
end

function _projection_callback(project!, n)
    w = zeros(n)
    affect! = function (integ)
        copyto!(w, integ.u)
        project!(w, integ.t)
        if w != integ.u
            copyto!(integ.u, w) # a real change: the solver restarts its derivative
        else
            _no_discontinuity!(integ)
        end
        return nothing
    end
    return DiscreteCallback(
        (_u, _t, _integ) -> true,
        affect!;
        save_positions = (false, false),
    )
end

function _step_callback(on_accept!, tr::Tracker)
    func = function (u, t, _integ)
        tr.nsteps += 1
        tr.last_t = t
        copyto!(tr.last_u, u)
        if on_accept! !== nothing && t != tr.accepted_t
            on_accept!(copy(tr.last_u), t)
            tr.accepted_t = t
        end
        return nothing
    end
    return FunctionCallingCallback(func; func_everystep = true, func_start = false)
end

# ---------------------------------------------------------------------------------- the solve
"""
    integrate_segment(rhs!, jvp!, y0, t0, t1, tsave; alg = "Tsit5", rtol = 1e-6, atol = 1e-9,
                      events = nothing, nevents = 0, directions = Int[], terminal = Bool[],
                      maxstep = Inf, dt = nothing, project = nothing, on_accept = nothing,
                      maxiters = 10^9, linsolve = :gmres)

Integrate `du/dt = rhs(u, t)` from `t0` to `t1` starting at `y0` and return a `NamedTuple`:

  - `t_save::Vector{Float64}`, `y_save::Matrix{Float64}` (`n × m`, column `j` is the state at
    `t_save[j]`): the requested save times in `(t0, t1]` that were reached (dense output);
  - `t_end`, `y_end`: where the integration stopped (`t1`, a terminal event, or the last accepted
    step of a failed run);
  - `ev_t`, `ev_index` (1-based), `ev_value`: located events, the value of the event function at
    the located time (on the far side of the crossing, `SciMLBase.RightRootFind`);
  - `terminal_index` (0 if none), `status` (`"ok"`, `"event"`, `"failed"`), `message`, `retcode`;
  - `n_rhs`, `n_jvp`, `n_steps` (accepted steps), `h_last` (proposed next step, `NaN` if unknown),
    `error::Bool` (an exception was thrown inside the solve, e.g. by a Python callback; the
    Python side re-raises its own exception).

Events: `events!(g, u, t)` fills all `nevents` values; `directions[i]` is `+1` (upward crossings
only), `-1` (downward) or `0` (both); `terminal[i]` stops the segment. `project!(w, t)` overwrites
a copy `w` of the state after every accepted step (a `DiscreteCallback`); the central flow's
complementarity projection can be applied there, or inside `rhs!`.
"""
function integrate_segment(
    rhs!,
    jvp!,
    y0::AbstractVector,
    t0::Real,
    t1::Real,
    tsave::AbstractVector;
    alg::AbstractString = "Tsit5",
    rtol::Real = 1.0e-6,
    atol::Real = 1.0e-9,
    events = nothing,
    nevents::Integer = 0,
    directions::AbstractVector = Int[],
    terminal::AbstractVector = Bool[],
    maxstep::Real = Inf,
    dt = nothing,
    project = nothing,
    on_accept = nothing,
    maxiters::Integer = 10^9,
    linsolve::Union{Symbol, AbstractString} = :gmres,
)
    u0 = Vector{Float64}(y0) # the solver's own state (a copy)
    n = length(u0)
    t0f, t1f = Float64(t0), Float64(t1)
    ts = filter!(t -> t0f < t <= t1f, sort!(Vector{Float64}(tsave)))
    dirs = Vector{Int}(directions)
    terms = Vector{Bool}(terminal)
    nev = Int(nevents)
    if events !== nothing && (length(dirs) != nev || length(terms) != nev)
        throw(ArgumentError("directions and terminal must have nevents=$nev entries"))
    end
    tr = Tracker(0, 0, 0, t0f, copy(u0), NaN, Float64[], Int[], Float64[], 0)

    bu, bdu = zeros(n), zeros(n)
    f! = function (du, u, _p, t)
        tr.nrhs += 1
        _call_inplace!(rhs!, du, bdu, u, bu, t)
        return nothing
    end
    if jvp! === nothing
        odef = ODEFunction{true}(f!)
    else
        bv, bjv, bu2 = zeros(n), zeros(n), zeros(n)
        jv! = function (Jv, v, u, _p, t)
            tr.njvp += 1
            if Jv isa Vector{Float64} && v isa Vector{Float64} && u isa Vector{Float64}
                jvp!(Jv, u, v, t)
            else
                copyto!(bu2, u)
                copyto!(bv, v)
                jvp!(bjv, bu2, bv, t)
                copyto!(Jv, bjv)
            end
            return nothing
        end
        odef = ODEFunction{true}(f!; jvp = jv!)
    end
    prob = ODEProblem(odef, u0, (t0f, t1f))

    cbs = Any[]
    if events !== nothing && nev > 0
        push!(cbs, _event_callback(events, nev, dirs, terms, project, on_accept, tr))
    end
    project === nothing || push!(cbs, _projection_callback(project, n))
    # after the projection (discrete callbacks run in order): sees the projected state
    push!(cbs, _step_callback(on_accept, tr))

    # saveat only: no step-end or event points (callbacks use save_positions=(false,false));
    # `save_end` explicit so that t1 is saved iff it was requested
    kw = Dict{Symbol, Any}(
        :reltol => Float64(rtol),
        :abstol => Float64(atol),
        :saveat => copy(ts),
        :save_start => false,
        :save_everystep => false,
        :save_end => !isempty(ts) && ts[end] == t1f,
        :maxiters => Int(maxiters),
        :callback => CallbackSet(cbs...),
    )
    isfinite(maxstep) && (kw[:dtmax] = Float64(maxstep))
    if dt !== nothing && isfinite(dt) && dt > 0
        kw[:dt] = min(Float64(dt), t1f - t0f)
    end
    algorithm = make_algorithm(String(alg); linsolve = Symbol(linsolve))

    status, message, retcode, errored = "ok", "", "Default", false
    integ = nothing
    try
        integ = SciMLBase.init(prob, algorithm; kw...)
        SciMLBase.solve!(integ)
    catch err
        errored = true
        status = "failed"
        message = sprint(showerror, err)
    end

    t_out = Float64[]
    y_out = zeros(n, 0)
    h_last = NaN
    if integ !== nothing
        sol = integ.sol
        # keep the requested times only: a terminal event with save_end=true adds its own point
        keep = findall(t -> insorted(t, ts), sol.t)
        t_out = Vector{Float64}(sol.t[keep])
        y_out = zeros(n, length(keep))
        for (j, k) in enumerate(keep)
            y_out[:, j] .= sol.u[k]
        end
        h = try
            Float64(get_proposed_dt(integ))
        catch
            NaN
        end
        h_last = (isfinite(h) && h > 0) ? h : NaN
        if !errored
            retcode = string(sol.retcode)
            if tr.terminal_index != 0 || sol.retcode == ReturnCode.Terminated
                status = "event"
            elseif SciMLBase.successful_retcode(sol)
                status = "ok"
                tr.last_t = integ.t
                copyto!(tr.last_u, integ.u)
            else
                status = "failed"
                message = "OrdinaryDiffEq stopped with retcode $(retcode) at t=$(integ.t)"
            end
        end
    end
    # a failed run reports the last accepted (projected) state; saves beyond it are dropped
    if status == "failed"
        keep = t_out .<= tr.last_t
        t_out, y_out = t_out[keep], y_out[:, keep]
    end

    return (
        t_save = t_out,
        y_save = y_out,
        t_end = tr.last_t,
        y_end = copy(tr.last_u),
        ev_t = tr.ev_t,
        ev_index = tr.ev_index,
        ev_value = tr.ev_value,
        terminal_index = tr.terminal_index,
        status = status,
        message = message,
        retcode = retcode,
        n_rhs = tr.nrhs,
        n_jvp = tr.njvp,
        n_steps = tr.nsteps,
        h_last = h_last,
        error = errored,
    )
end

end # module
