"""`python -m services.cli ...`: how the supervisor, the containers and the tests start a command."""

from services.cli.main import main

main()
