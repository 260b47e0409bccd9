from wsss.cli import main

main()
