"""How the guest starts the capsa agent: a script run as ``__main__`` is compiled at every
start (0.2 s under emulation for capsa_agent.py), an imported module loads the bytecode the
sandbox image holds (compiled at build time, checked against its source's hash).

Standard library only; it imports nothing but the agent, which lives beside it.
"""
import sys

if __name__ == "__main__":
    import capsa_agent  # type: ignore[import-not-found]  # beside this file in the guest, not a package

    sys.exit(capsa_agent.main(sys.argv[1:]))
