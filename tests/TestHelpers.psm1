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

# Starts the sandbox (local doubles of SSM, EC2, the Session Manager data channel) as a child process and returns
# its endpoints. -World is a hashtable written as the sandbox's JSON configuration. Stop it with Stop-TestSandbox.
function Start-TestSandbox {
    param([hashtable] $World, [string[]] $ExtraArguments = @(), [int] $TimeoutSeconds = 60)
    $dll = $env:BASTIONTOOLS_SANDBOX
    if (-not $dll -or -not (Test-Path $dll)) { throw "The sandbox is not built (BASTIONTOOLS_SANDBOX='$dll'): run build.ps1 -Task Test." }
    $psi = [System.Diagnostics.ProcessStartInfo]::new('dotnet')
    $psi.ArgumentList.Add($dll)
    if ($World) {
        $config = Join-Path ([IO.Path]::GetTempPath()) ("bt-world-" + [guid]::NewGuid().ToString('n') + '.json')
        $World | ConvertTo-Json -Depth 10 | Set-Content -Path $config -Encoding utf8
        $psi.ArgumentList.Add('--config'); $psi.ArgumentList.Add($config)
    }
    foreach ($a in $ExtraArguments) { $psi.ArgumentList.Add($a) }
    # Windows instances run -Command in "powershell.exe": this same PowerShell plays it (see tests/Sandbox/WindowsPowerShell.cs).
    $psi.ArgumentList.Add('--windows-powershell')
    $psi.ArgumentList.Add($(if ([System.IO.Path]::GetFileNameWithoutExtension([Environment]::ProcessPath) -eq 'dotnet') { Join-Path $PSHOME 'pwsh.dll' } else { [Environment]::ProcessPath }))
    $psi.RedirectStandardInput = $true
    $psi.RedirectStandardOutput = $true
    $psi.RedirectStandardError = $true
    $psi.UseShellExecute = $false
    $p = [System.Diagnostics.Process]::Start($psi)
    $errors = [System.Text.StringBuilder]::new()
    $null = Register-ObjectEvent -InputObject $p -EventName ErrorDataReceived -MessageData $errors -Action { if ($EventArgs.Data) { [void] $Event.MessageData.AppendLine($EventArgs.Data) } }
    $p.BeginErrorReadLine()
    $lineTask = $p.StandardOutput.ReadLineAsync()
    if (-not $lineTask.Wait($TimeoutSeconds * 1000) -or -not $lineTask.Result) {
        try { $p.Kill($true) } catch { }
        throw "The sandbox did not start: $errors"
    }
    $info = $lineTask.Result | ConvertFrom-Json
    $info | Add-Member -NotePropertyName Process -NotePropertyValue $p
    $info | Add-Member -NotePropertyName Stderr -NotePropertyValue $errors
    # The AWS parameters every cmdlet call against this sandbox needs.
    $info | Add-Member -NotePropertyName Aws -NotePropertyValue @{
        AccessKey   = $info.accessKeyId
        SecretKey   = $info.secretAccessKey
        Region      = $info.region
        EndpointUrl = $info.ssm
    }
    $info
}

function Stop-TestSandbox {
    param([Parameter(Mandatory)] $Sandbox)
    if (-not $Sandbox) { return }
    $p = $Sandbox.Process
    try { $p.StandardInput.Close() } catch { }
    if (-not $p.WaitForExit(20000)) { try { $p.Kill($true) } catch { } }
}

<#
  True when nothing accepts on 127.0.0.1:Port: the connection is refused, or the probe met itself. With nothing bound to a
  port in the ephemeral range, Linux may give the connecting socket that very port as its own, and its SYN then meets
  itself (TCP simultaneous open) and "connects": not a listener.
#>
function Test-LoopbackPortRefused {
    param([Parameter(Mandatory)] [int] $Port, [string] $Address = '127.0.0.1')
    $ip = [System.Net.IPAddress]::Parse($Address)
    $probe = [System.Net.Sockets.Socket]::new($ip.AddressFamily, [System.Net.Sockets.SocketType]::Stream, [System.Net.Sockets.ProtocolType]::Tcp)
    try {
        try { $probe.Connect($ip, $Port) } catch { return $true }
        return $probe.LocalEndPoint.Equals($probe.RemoteEndPoint)
    } finally { $probe.Dispose() }
}

Export-ModuleMember -Function *
