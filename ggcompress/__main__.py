from ggcompress.cli import main

main()
