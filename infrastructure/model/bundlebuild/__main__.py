from bundlebuild.build import main

main()
