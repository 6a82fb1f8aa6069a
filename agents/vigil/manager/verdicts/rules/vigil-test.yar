/*
 * Vigil's shipped YARA rules: a small set that proves the pipeline end to end and catches a few
 * unmistakable things. Real deployments add their own rule files (verdicts.yara_rules).
 */

rule Vigil_Test_Marker
{
    meta:
        description = "Vigil's own test marker: any file containing this string is malicious"
        verdict = "malicious"
    strings:
        $m = "VIGIL-TEST-MALWARE-5f1c0b9e"
    condition:
        $m
}

rule EICAR_Test_File
{
    meta:
        description = "The EICAR anti-virus test string"
        verdict = "malicious"
    strings:
        $eicar = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    condition:
        $eicar
}

rule Shell_Reverse_Dev_Tcp
{
    meta:
        description = "A script or binary that opens a shell over /dev/tcp (bash reverse shell)"
        verdict = "malicious"
    strings:
        $a = /(bash|sh) -i *>& *\/dev\/tcp\/[0-9a-zA-Z.\-]+\/[0-9]+/
        $b = /exec [0-9]+<> *\/dev\/tcp\//
    condition:
        any of them
}

rule XMRig_Miner_Strings
{
    meta:
        description = "XMRig cryptocurrency miner (grayware unless the operator says otherwise)"
        verdict = "grayware"
    strings:
        $a = "xmrig" nocase ascii
        $b = "stratum+tcp://" ascii
        $c = "randomx" nocase ascii
    condition:
        all of them
}
