# Dependency shapes: a chain of eight steps, each using the previous one, and a fan-in of six
# parts combined by one derivation.
{ mkJob, nested }:
let
  step = n: prev: mkJob ({
    name = "chain-step-${toString n}";
    script = ''
      mkdir -p $out
      if [ -n "''${prev:-}" ]; then cat $prev/log > $out/log; fi
      echo "step ${toString n}" >> $out/log
    '';
    meta.description = "Step ${toString n} of the chain";
  } // (if prev == null then { } else { inherit prev; }));

  # [ step1 ... stepN ], each step given the one before it.
  steps = n:
    if n == 0 then [ ]
    else
      let before = steps (n - 1);
      in before ++ [ (step n (if before == [ ] then null else builtins.elemAt before (n - 2))) ];

  parts = builtins.listToAttrs (builtins.genList
    (i: {
      name = "part${toString (i + 1)}";
      value = mkJob {
        name = "fanin-part-${toString (i + 1)}";
        script = ''
          echo "part ${toString (i + 1)}" > $out
        '';
      };
    }) 6);
in
{
  chain = nested (builtins.listToAttrs (builtins.genList
    (i: { name = "step${toString (i + 1)}"; value = builtins.elemAt (steps 8) i; }) 8));

  fanin = nested {
    parts = nested parts;
    combined = mkJob ({
      name = "fanin-combined";
      script = ''
        cat ${builtins.concatStringsSep " " (map (p: "$" + p) (builtins.attrNames parts))} > $out
      '';
      meta = {
        description = "Combines all six parts";
        schedulingPriority = 50;
      };
    } // parts);
  };
}
