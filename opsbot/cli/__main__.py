from opsbot.cli import main

main()
