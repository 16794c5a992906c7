"""`python -m codi2_agent.cli`: the same command line as the `codi2-agent` script."""

from codi2_agent.cli import main

if __name__ == "__main__":
    main()
