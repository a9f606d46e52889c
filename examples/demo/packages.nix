# Packages: a plain build, fixed-output sources, a multiple-output library and a derivation
# with structured attributes.
{ mkJob, nested }:
rec {
  hello = mkJob {
    name = "hello-1.0";
    # A source file: copied to the store at evaluation time, an input source of the .drv.
    src = ./hello.sh;
    script = ''
      mkdir -p $out/bin
      cp $src $out/bin/hello
      chmod +x $out/bin/hello
    '';
    meta = {
      description = "Prints a friendly greeting";
      schedulingPriority = 200;
    };
  };

  # Fixed-output derivations: the builder makes the content itself (no network), and the
  # expected hash is known in advance.
  greeting = mkJob {
    name = "greeting.txt";
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = builtins.hashString "sha256" "Hello from a fixed-output derivation\n";
    script = ''
      printf 'Hello from a fixed-output derivation\n' > $out
    '';
    meta.description = "A flat fixed-output source";
  };

  greeting-tree = mkJob {
    name = "greeting-tree";
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
    # `nix-hash --type sha256 --sri` of a directory holding greeting.txt.
    outputHash = "sha256-/gS3dBJxzJje+kt74yQQy4FuNXOlGwY6x6M1S6GOUn0=";
    script = ''
      mkdir $out
      printf 'Hello from a recursive fixed-output derivation\n' > $out/greeting.txt
    '';
    meta.description = "A recursive (NAR-hashed) fixed-output source";
  };

  shout = mkJob {
    name = "shout-1.0";
    inherit greeting;
    greetingTree = greeting-tree;
    script = ''
      mkdir -p $out
      tr a-z A-Z < $greeting > $out/greeting.txt
      tr a-z A-Z < $greetingTree/greeting.txt >> $out/greeting.txt
    '';
    meta.description = "Depends on both fixed-output sources";
  };

  # Three outputs; Hydra builds them together as one job.
  libdemo = mkJob {
    name = "libdemo-2.1";
    outputs = [ "out" "dev" "doc" ];
    script = ''
      mkdir -p $out/lib $dev/include $doc/share/doc/libdemo
      echo 'int demo(void) { return 42; }' > $out/lib/demo.c
      echo 'int demo(void);' > $dev/include/demo.h
      echo 'libdemo: returns 42' > $doc/share/doc/libdemo/README
    '';
    meta.description = "A library with out, dev and doc outputs";
  };

  uses-libdemo = mkJob {
    name = "uses-libdemo-1.0";
    headers = libdemo.dev;
    library = libdemo.out;
    script = ''
      mkdir -p $out
      cat $headers/include/demo.h $library/lib/demo.c > $out/combined.c
    '';
  };

  # With __structuredAttrs the attributes reach the builder as .attrs.json (and .attrs.sh, in
  # bash syntax) instead of environment variables, and keep their JSON types.
  structured = mkJob {
    name = "structured-1.0";
    __structuredAttrs = true;
    greetingText = "structured hello";
    numbers = [ 1 2 3 ];
    settings = { verbose = true; level = 3; };
    script = ''
      attrs="$NIX_BUILD_TOP/.attrs.json"
      out=$(sed -n 's/.*"outputs":{"out":"\([^"]*\)".*/\1/p' "$attrs")
      mkdir -p "$out"
      cp "$attrs" "$out/attrs.json"
      sed -n 's/.*"greetingText":"\([^"]*\)".*/\1/p' "$attrs" > "$out/greeting"
    '';
    meta.description = "Uses structured attributes";
  };
}
