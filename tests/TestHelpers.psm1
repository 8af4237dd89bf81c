# Shared helpers for the Pester suite.

function Get-TestModulePath { $env:BASTIONTOOLS_TEST_MODULE }

function Get-TestToolsPath { $env:BASTIONTOOLS_TEST_TOOLS }

# Runs a script in a fresh PowerShell process (the same pwsh as this one) and returns its output lines,
# standard error and exit code. Environment entries in -Environment are set for that process only.
function Invoke-ChildPwsh {
    param(
        [Parameter(Mandatory)] [string] $Script,
        [hashtable] $Environment = @{},
        [string[]] $RemoveEnvironment = @(),
        [int] $TimeoutSeconds = 120
    )
    $psi = [System.Diagnostics.ProcessStartInfo]::new()
    $psi.FileName = [Environment]::ProcessPath
    if ([System.IO.Path]::GetFileNameWithoutExtension($psi.FileName) -eq 'dotnet') { $psi.ArgumentList.Add((Join-Path $PSHOME 'pwsh.dll')) }
    $file = Join-Path ([System.IO.Path]::GetTempPath()) ("bt-child-" + [guid]::NewGuid().ToString('n') + '.ps1')
    Set-Content -Path $file -Value $Script -Encoding utf8
    foreach ($a in '-NoProfile', '-NonInteractive', '-File', $file) { $psi.ArgumentList.Add($a) }
    $psi.RedirectStandardOutput = $true
    $psi.RedirectStandardError = $true
    $psi.UseShellExecute = $false
    foreach ($k in $RemoveEnvironment) { [void] $psi.Environment.Remove($k) }
    foreach ($k in $Environment.Keys) { $psi.Environment[$k] = [string] $Environment[$k] }
    $p = [System.Diagnostics.Process]::Start($psi)
    $stdoutTask = $p.StandardOutput.ReadToEndAsync()
    $stderrTask = $p.StandardError.ReadToEndAsync()
    try {
        if (-not $p.WaitForExit($TimeoutSeconds * 1000)) {
            $p.Kill($true)
            throw "The child pwsh did not finish within $TimeoutSeconds s."
        }
        $p.WaitForExit()
    }
    finally {
        Remove-Item $file -ErrorAction SilentlyContinue
    }
    [pscustomobject]@{
        Output   = $stdoutTask.Result
        Error    = $stderrTask.Result
        ExitCode = $p.ExitCode
    }
}

Export-ModuleMember -Function *
