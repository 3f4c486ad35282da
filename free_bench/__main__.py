from free_bench.cli import main

raise SystemExit(main())
