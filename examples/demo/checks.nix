# Tests and documentation: passing tests, a deliberately failing test, a test that produces
# output but reports failure (Hydra status 6), and a manual with build products and metrics.
{ mkJob, nested, hello }:
{
  tests = nested {
    unit = nested {
      arithmetic = mkJob {
        name = "test-arithmetic";
        script = ''
          [ $((6 * 7)) -eq 42 ]
          echo passed > $out
        '';
      };
      hello-runs = mkJob {
        name = "test-hello-runs";
        inherit hello;
        script = ''
          $hello/bin/hello | grep -q 'Hello, world!'
          echo passed > $out
        '';
        meta.description = "Runs the hello package";
      };
    };

    # Fails on purpose: the builder exits non-zero.
    broken = mkJob {
      name = "test-broken";
      script = ''
        echo "this test fails on purpose" >&2
        exit 1
      '';
      meta = {
        description = "Always fails (Hydra status 1)";
        maxSilent = 60;
        timeout = 120;
      };
    };

    # Builds successfully but marks itself failed: Hydra shows "failed with output" (status 6)
    # and still keeps the output.
    flaky = mkJob {
      name = "test-flaky";
      script = ''
        mkdir -p $out/nix-support
        echo "2 of 3 checks passed" > $out/report.txt
        echo "report test-report $out/report.txt" > $out/nix-support/hydra-build-products
        touch $out/nix-support/failed
      '';
      meta.description = "Produces a report but marks the build failed";
    };
  };

  docs = nested {
    manual = mkJob {
      name = "demo-manual-1.0";
      script = ''
        mkdir -p $out/share/doc/demo $out/dist $out/nix-support
        printf '<html><body><h1>Demo manual</h1><p>Built by busybox.</p></body></html>\n' \
          > $out/share/doc/demo/manual.html
        printf 'binary distribution\n' > "$out/dist/demo tool.bin"
        cat > $out/nix-support/hydra-build-products <<EOF
      doc manual $out/share/doc/demo/manual.html
      file binary-dist "$out/dist/demo tool.bin"
      EOF
        words=$(wc -w < $out/share/doc/demo/manual.html)
        bytes=$(wc -c < $out/share/doc/demo/manual.html)
        printf 'manual.words %s words\nmanual.size %s bytes\n' $words $bytes \
          > $out/nix-support/hydra-metrics
      '';
      meta = {
        description = "A manual with Hydra build products and metrics";
        schedulingPriority = 10;
      };
    };
  };
}
