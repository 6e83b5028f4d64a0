from georep.cli import main

main()
