# Tests of PyrodFlows.integrate_segment on problems with closed forms, in pure Julia (the
# callables are Julia functions here; through juliacall they are Python callables with the same
# in-place signatures). Run with: julia --project=julia -e 'using Pkg; Pkg.test()'
using Test
using PyrodFlows

decay!(du, u, _t) = (du .= .-u; nothing)

@testset "PyrodFlows" begin
    @testset "exponential decay, saves at integer steps ($alg)" for alg in PyrodFlows.ALGORITHMS
        ts = [0.5, 1.0, 1.5, 2.0]
        r = integrate_segment(
            decay!,
            nothing,
            [1.0, 2.0],
            0.0,
            2.0,
            ts;
            alg = alg,
            rtol = 1.0e-8,
            atol = 1.0e-10,
        )
        @test r.status == "ok"
        @test r.t_save == ts
        @test size(r.y_save) == (2, 4)
        @test isapprox(r.y_save[1, :], exp.(-ts); rtol = 1.0e-5)
        @test isapprox(r.y_save[2, :], 2 .* exp.(-ts); rtol = 1.0e-5)
        @test r.t_end == 2.0
        @test isapprox(r.y_end, [exp(-2.0), 2 * exp(-2.0)]; rtol = 1.0e-5)
        @test r.n_rhs > 0
        @test r.n_steps > 0
        @test !r.error
    end

    @testset "terminal event at t = ln 2" begin
        half!(g, u, _t) = (g[1] = u[1] - 0.5; nothing)
        r = integrate_segment(
            decay!,
            nothing,
            [1.0],
            0.0,
            3.0,
            [0.5, 1.0, 2.0, 3.0];
            rtol = 1.0e-10,
            atol = 1.0e-12,
            events = half!,
            nevents = 1,
            directions = [-1],
            terminal = [true],
        )
        @test r.status == "event"
        @test r.terminal_index == 1
        @test length(r.ev_t) == 1
        @test isapprox(r.ev_t[1], log(2); atol = 1.0e-8)
        @test r.ev_index == [1]
        @test r.ev_value[1] <= 0 # far side of the crossing
        @test isapprox(r.t_end, log(2); atol = 1.0e-8)
        @test isapprox(r.y_end[1], 0.5; atol = 1.0e-8)
        @test r.t_save == [0.5] # nothing after the event
    end

    @testset "event directions on y = sin t" begin
        cosine!(du, _u, t) = (du[1] = cos(t); nothing)
        zero!(g, u, _t) = (g[1] = u[1]; nothing)
        for (dir, expected) in ((1, [2pi]), (-1, [pi]), (0, [pi, 2pi]))
            r = integrate_segment(
                cosine!,
                nothing,
                [sin(0.1)],
                0.1,
                7.0,
                Float64[];
                rtol = 1.0e-10,
                atol = 1.0e-12,
                events = zero!,
                nevents = 1,
                directions = [dir],
                terminal = [false],
            )
            @test r.status == "ok"
            @test length(r.ev_t) == length(expected)
            @test isapprox(r.ev_t, expected; atol = 1.0e-7)
        end
    end

    @testset "stiff linear system with a user J*v ($alg)" for alg in ("FBDF", "KenCarp47")
        lam = [-1.0, -200.0]
        lin!(du, u, _t) = (du .= lam .* u; nothing)
        jvp!(jv, _u, v, _t) = (jv .= lam .* v; nothing)
        r = integrate_segment(
            lin!,
            jvp!,
            [1.0, 1.0],
            0.0,
            2.0,
            [1.0, 2.0];
            alg = alg,
            rtol = 1.0e-7,
            atol = 1.0e-10,
        )
        @test r.status == "ok"
        @test isapprox(r.y_save[1, :], exp.(-[1.0, 2.0]); rtol = 1.0e-4)
        @test all(abs.(r.y_save[2, :]) .< 1.0e-6)
        @test r.n_jvp > 0 # Krylov used the supplied product
        d = integrate_segment(
            lin!,
            nothing,
            [1.0, 1.0],
            0.0,
            2.0,
            [2.0];
            alg = alg,
            rtol = 1.0e-7,
            atol = 1.0e-10,
            linsolve = :dense,
        )
        @test d.status == "ok"
        @test isapprox(d.y_end[1], exp(-2.0); rtol = 1.0e-4)
    end

    @testset "projection after every step and on_accept" begin
        floor!(w, _t) = (w .= max.(w, 0.6); nothing)
        seen = Float64[]
        accept!(_u, t) = (push!(seen, t); nothing)
        r = integrate_segment(
            decay!,
            nothing,
            [1.0],
            0.0,
            3.0,
            [1.0, 2.0, 3.0];
            project = floor!,
            on_accept = accept!,
            maxstep = 0.05,
        )
        @test r.status == "ok"
        @test r.y_end[1] == 0.6 # projected at every step end
        # saves inside a step come from the (unprojected) interpolant: within one step of 0.6
        @test all(0.6 * exp(-0.05) - 1.0e-6 .<= r.y_save[1, :] .<= 0.6 + 1.0e-12)
        @test length(seen) == r.n_steps
        @test issorted(seen) && allunique(seen)
        @test seen[end] == 3.0
    end

    @testset "max step, first step, h_last" begin
        r = integrate_segment(
            decay!,
            nothing,
            [1.0],
            0.0,
            1.0,
            Float64[];
            maxstep = 0.01,
            dt = 0.001,
        )
        @test r.status == "ok"
        @test r.n_steps >= 100
        @test 0 < r.h_last <= 0.01 + 1.0e-12
    end

    @testset "exceptions in a callback end the segment as failed" begin
        bad!(du, u, t) = t > 1.0 ? error("boom") : (du .= .-u; nothing)
        r = integrate_segment(bad!, nothing, [1.0], 0.0, 2.0, [0.5, 1.0, 1.5, 2.0])
        @test r.status == "failed"
        @test r.error
        @test occursin("boom", r.message)
        @test r.t_end <= 1.0 + 1.0e-12
        @test all(r.t_save .<= r.t_end)
        @test isapprox(r.y_end[1], exp(-r.t_end); rtol = 1.0e-4)
    end

    @testset "argument checks" begin
        @test_throws ArgumentError PyrodFlows.make_algorithm("Euler")
        @test_throws ArgumentError PyrodFlows.make_algorithm("FBDF"; linsolve = :lu)
        g!(g, u, _t) = (g[1] = u[1]; nothing)
        @test_throws ArgumentError integrate_segment(
            decay!,
            nothing,
            [1.0],
            0.0,
            1.0,
            Float64[];
            events = g!,
            nevents = 1,
            directions = Int[],
            terminal = Bool[],
        )
        r = integrate_segment(decay!, nothing, [1.0], 0.0, 1.0, [-1.0, 0.0, 5.0])
        @test isempty(r.t_save) # outside (t0, t1]
    end
end
