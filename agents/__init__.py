"""The agents shipped with sel_otel, installed as the `sel_otel_agents` package.

Each module beside this file is an agent, loaded by the agent registry (never imported through
this package); this file, like any whose name starts with `_`, is not an agent.
"""
